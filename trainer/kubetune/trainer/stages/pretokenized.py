"""Let TRL trainers take kubetune's pre-tokenized rows as they are.

kubetune's processors already apply the chat template, truncate and mask (LLaMA-Factory
semantics, with per-row reports); TRL's DPO/KTO trainers would re-extract prompts from text.
:func:`pretokenized` wraps a trainer class so rows that carry ``prompt_ids`` skip that step.
:func:`legacy_pairwise` converts pairwise rows to the older column layout that
``trl.experimental`` ORPO/CPO expect (``prompt_input_ids``, ``chosen_input_ids``, ``chosen_labels``…).
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def pretokenized(trainer_cls: type) -> type:
    """A subclass of ``trainer_cls`` whose ``_prepare_dataset`` passes pre-tokenized datasets through."""

    class Pretokenized(trainer_cls):  # type: ignore[misc, valid-type]
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" not in (dataset.column_names or []):
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            max_length = getattr(args, "max_length", None)
            if max_length is not None:  # a prompt that fills max_length leaves nothing to learn from
                dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < max_length)
            return dataset

    Pretokenized.__name__ = Pretokenized.__qualname__ = f"Kubetune{trainer_cls.__name__}"
    return Pretokenized


def legacy_tokenized(trainer_cls: type) -> type:
    """A subclass of an experimental trainer whose ``tokenize_row`` keeps already-tokenized rows."""

    class Legacy(trainer_cls):  # type: ignore[misc, valid-type]
        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            if "chosen_input_ids" in feature:
                return feature
            return super().tokenize_row(feature, model)

    Legacy.__name__ = Legacy.__qualname__ = f"Kubetune{trainer_cls.__name__}"
    return Legacy


def legacy_pairwise(row: dict[str, Any]) -> dict[str, Any]:
    """{prompt_ids, chosen_ids, rejected_ids} → the DPODataCollatorWithPadding column layout."""
    prompt = list(row["prompt_ids"])
    out: dict[str, Any] = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for kind in ("chosen", "rejected"):
        answer = list(row[f"{kind}_ids"])
        ids = prompt + answer
        out[f"{kind}_input_ids"] = ids
        out[f"{kind}_attention_mask"] = [1] * len(ids)
        out[f"{kind}_labels"] = [IGNORE_INDEX] * len(prompt) + answer
    return out
