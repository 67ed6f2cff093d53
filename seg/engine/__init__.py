"""Training and evaluation machinery: checkpoints, LR schedule, distributed setup."""
