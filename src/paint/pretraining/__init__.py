"""Pretraining a dual encoder (CLIP or SigLIP) on the offline world, and shipping it as a package asset.

The world itself (``paint.world``: images, captions, tasks, tokenizer) is a leaf that imports
nothing of the model stack; this package is where the world meets the models and the training
loop. ``build`` makes the config, tokenizer, model and processor; ``run`` trains and exports;
``ship`` copies a finished run into ``paint/assets`` with its ``BUILD.json``.
"""
