"""Data pipeline, one step per module:

sources (read rows) → converters (one canonical example shape) → templates (render turns)
→ processors (tokenize per stage shape) → report (what was dropped, and why).
``loader.load_datasets`` runs the steps for a TrainerConfig.
"""
