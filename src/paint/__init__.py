"""paint: patch open-vocabulary image models in weight space."""

__version__ = "0.1.0"
