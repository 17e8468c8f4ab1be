"""Supervised fine-tuning (transformers Trainer over kubetune's tokenized, prompt-masked rows)."""
