"""crackdet's Hydra plugins: an Optuna (>= 4) sweeper on the ask-and-tell API."""
