"""CLIP models through transformers: loading, saving, zero-shot heads."""
