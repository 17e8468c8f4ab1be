"""Data pipeline, one step per module:

registry (dataset_info.json → DatasetSpec) → sources (read rows) → converters (one canonical example
shape) → templates (render turns) → processors (tokenize per stage shape; packing) → mixing → report
(what was dropped, and why). ``loader.convert_all`` / ``loader.tokenize_all`` run the steps for a
TrainerConfig; ``preflight.check`` runs them for ``kubetune data check`` with only a tokenizer.
"""
