"""Evaluation: predictions, metrics, the results store, losses and gradients along a line in weight space."""
