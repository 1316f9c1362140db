"""Training: one loop and the recipes that use it.

- :mod:`paint.train.loop`: the step loop (``fit``), a page; :mod:`paint.train.optim` its AdamW and
  warmup-cosine schedule; :mod:`paint.train.speed` how it uses the device; :mod:`paint.train.record`
  what it records (losses read once per log interval, the tracker);
- :mod:`paint.train.checkpoint`: saving and resuming (``CheckpointSaver``, verified reads);
- :mod:`paint.train.data`: training sets, the batch-at-a-time dataset, the seeded loaders;
- :mod:`paint.train.recipes`: one class per fine-tuning recipe, one registry, ``FinetuneConfig``;
- :mod:`paint.train.finetune`: the entry point, ``finetune(model, sets, spec, cfg)``.
"""
