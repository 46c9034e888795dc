"""Sweeps: an Optuna study over a recipe's config keys whose trials are normal dtrain runs (python -m common.sweep)."""
