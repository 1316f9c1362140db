"""Choosing coefficients: objectives, search strategies and the one selection config (pure: no model code)."""
