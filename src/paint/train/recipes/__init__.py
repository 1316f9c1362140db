"""Fine-tuning recipes behind one interface (``finetune.recipe``), one module and one class each.

A recipe class (:class:`paint.train.recipes.base.Recipe`) declares its settings, what it trains,
what its line covers and its hooks, and registers itself with one line
(:func:`paint.train.recipes.registry.register`). Importing this package registers the built-in
ones, in the order messages list them: frozen-head (PAINT, the default), lp-ft, flyp, l2-sp,
lora (peft) and soup.
"""

# Each import registers its module's recipe: a new recipe's module is one more line here, before
# soup's (a soup's base is any recipe registered before it).
# isort: off
from paint.train.recipes import frozen_head  # noqa: F401
from paint.train.recipes import lpft  # noqa: F401
from paint.train.recipes import flyp  # noqa: F401
from paint.train.recipes import l2sp  # noqa: F401
from paint.train.recipes import lora  # noqa: F401
from paint.train.recipes import soup  # noqa: F401
# isort: on
