"""Tasks, readers and preprocessing."""
