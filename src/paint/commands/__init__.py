"""One module per ``paint`` sub-command: ``register(parser)`` and ``run(args)``."""
