"""Training: the Learner, its losses, metrics, one-cycle schedules, fine_tune and the LR finder."""
