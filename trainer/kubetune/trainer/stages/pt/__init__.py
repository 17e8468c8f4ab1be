"""Pre-training: causal LM on packed text (transformers Trainer over pre-tokenized blocks)."""
