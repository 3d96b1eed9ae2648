"""Training: DeepSpeed engine set-up, the loop, schedules, checkpoints, metrics."""
