"""Fine-tuning recipes behind one interface (``finetune.recipe``): frozen-head (PAINT, the default),
lp-ft, flyp, l2-sp, lora (peft) and soup. See :mod:`paint.train.recipes.registry` for the table."""
