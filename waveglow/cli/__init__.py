"""Thin Hydra entry points, one module per console script."""
