"""Data pipeline, one step per module, each entered once by :mod:`.loader`:

registry (dataset_info.json → DatasetSpec) → sources (fetch, read rows) → conversion (sample; converters:
one canonical example shape) → tokenization (templates render turns; processors tokenize per stage shape;
token_cache keeps the rows) → report (what was dropped, and why) → mixing → packing (``processors.finish``). The steps read
:class:`.options.DataOptions`, built once from the TrainerConfig; ``loader.convert_all`` /
``loader.tokenize_all`` run them for a run, ``dataset_check.check`` for ``kubetune data check`` with only
a tokenizer.
"""
