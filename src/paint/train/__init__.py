"""Training: the shared loop (Accelerate, schedule, atomic checkpoints, resume) and its users."""
