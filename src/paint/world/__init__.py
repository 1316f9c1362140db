"""The offline open-vocabulary world: synthetic images, captions, tasks and a tokenizer."""
