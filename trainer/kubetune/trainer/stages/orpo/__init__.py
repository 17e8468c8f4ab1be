"""Odds-ratio preference optimisation (trl.experimental.orpo, imported lazily)."""
