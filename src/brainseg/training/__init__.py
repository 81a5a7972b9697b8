"""Training loop, checkpoints, learning-rate policies and model cards."""
