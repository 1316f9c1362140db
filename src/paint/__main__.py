import sys

from paint.cli import main

sys.exit(main())
