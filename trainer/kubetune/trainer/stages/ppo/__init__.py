"""PPO against a reward model: kubetune's own loop (TRL 1.16 has no PPO trainer)."""
