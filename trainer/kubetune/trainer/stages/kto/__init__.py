"""Kahneman-Tversky optimisation on desirable/undesirable labels (TRL KTOTrainer)."""
