"""Reward modelling on chosen/rejected pairs (TRL RewardTrainer, a sequence-classification head)."""
