"""Direct preference optimisation (TRL DPOTrainer; SimPO through trl.experimental.cpo)."""
