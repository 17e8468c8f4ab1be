"""Model side: fetch and open the base model and tokenizer, then attach the training method."""
