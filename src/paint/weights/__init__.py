"""Weight-space operations: pure functions on state dicts."""
