"""Pre-training: causal LM on packed text (TRL SFTTrainer over pre-tokenized blocks)."""
