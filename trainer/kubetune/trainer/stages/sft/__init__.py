"""Supervised fine-tuning (TRL SFTTrainer)."""
