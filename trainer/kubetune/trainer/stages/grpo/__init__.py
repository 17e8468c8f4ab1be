"""Group relative policy optimisation against a reward model (TRL GRPOTrainer)."""
