"""The pt/sft training step: next-token loss on rows kubetune already tokenized, masked and (optionally) packed.

Two things make it cheaper than a model's own loss on a padded batch, with the same result:

* **Padding-free batches when they cost less.** A batch of rows of uneven length is flattened into one
  row (TRL's collator: position ids restart per row, so the model's block-diagonal causal mask keeps
  the rows apart) when that computes fewer FLOPs than padding every row to the longest one
  (:func:`flatten_is_cheaper`). Packed rows (``training.packing``) hold several documents: padded, they
  carry position ids that restart per document and no attention mask, so they stay apart either way.
* **Logits only where a label is trained.** The LM head (a ``vocab x hidden`` matmul, a softmax over
  the vocabulary, and the same again backwards) runs only on the positions whose next token is
  trained, not on prompts and padding: a pre-forward hook on the output embeddings hands it those
  hidden states alone. The loss is the same token-summed cross-entropy the model computes
  (``ForCausalLMLoss``), divided by the tokens of the whole accumulated batch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.trainer.stages.base import RunContext, StageResult, build_and_train, load_model_and_arguments


def attention_cost_ratio(config: Any) -> float:
    """FLOPs of attention per token per token of context, relative to a token's linear-layer FLOPs.

    Per layer and token, the projections and MLP cost ``2 * P_layer`` and attention (``QK^T`` and ``AV``)
    ``4 * context * hidden``; so a token costs ``2 * P_layer * (1 + ratio * context)``.
    """
    text = getattr(config, "text_config", None) or config
    hidden = int(text.hidden_size)
    heads = int(getattr(text, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate
    return 2 * hidden / per_layer


def flatten_is_cheaper(lengths: Sequence[int], ratio: float, *, varlen_attention: bool = False) -> bool:
    """Whether one flattened row of ``sum(lengths)`` tokens costs fewer FLOPs than ``len(lengths)`` padded rows.

    Flattening drops the padding from every linear layer, but without a varlen attention kernel (flash
    attention) the block-diagonal mask is applied to a dense ``n x n`` score matrix, so attention grows
    with the square of the whole batch instead of each row.
    """
    if len(lengths) <= 1:
        return False
    if varlen_attention:
        return True
    total, longest = sum(lengths), max(lengths)
    padded = len(lengths) * longest * (1 + ratio * longest)
    flat = total * (1 + ratio * total)
    return flat < padded


def isolates_packed_rows(model: Any) -> bool:
    """Whether the model keeps flattened rows apart from their position ids.

    transformers' own models build their causal mask with ``masking_utils.create_causal_mask``, which
    turns restarting position ids into a block-diagonal mask (or, with flash attention, into varlen
    sequence boundaries); remote-code models that build their own mask would let rows attend to each other.
    """
    from transformers import masking_utils

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return getattr(module, "create_causal_mask", None) is masking_utils.create_causal_mask or varlen(model)


def varlen(model: Any) -> bool:
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    return "flash" in impl


@dataclass
class Collator:
    """TRL's language-modeling collator, padded or padding-free per batch (see :func:`flatten_is_cheaper`)."""

    pad_token_id: int
    flatten: Callable[[Sequence[int]], bool]

    def __post_init__(self) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._padded = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id)
        self._positions = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, return_position_ids=True)
        self._flat = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=True)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.flatten([len(e["input_ids"]) for e in examples]):
            return self._flat(examples)
        if "seq_lengths" not in examples[0]:
            return self._padded(examples)
        # packed rows, padded: position ids restart at every document and, without an attention mask, the
        # model keeps the documents of each row apart (padding only ever follows the real tokens)
        batch = self._positions(examples)
        del batch["attention_mask"]
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


LOSS_CHUNK = 1024  # trained positions per LM-head chunk with ``training.kernels: [chunked_loss]``


def logit_postprocess(config: Any) -> Callable[[Any], Any]:
    """What a model does to its LM head's output before the loss (Gemma's soft-capping, Cohere's scale)."""
    text = getattr(config, "text_config", None) or config
    cap = getattr(text, "final_logit_softcapping", None)
    scale = getattr(text, "logit_scale", None)

    def post(logits: Any) -> Any:
        if scale is not None:
            logits = logits * scale
        if cap:
            logits = (logits / cap).tanh() * cap
        return logits

    return post


def make_trainer_class(chunk: int | None = None) -> type:
    """``transformers.Trainer`` whose loss scores only the trained positions (imports transformers lazily).

    With ``chunk``, the LM head never runs inside the model: the trained positions' hidden states are taken
    from its input, and the head and cross-entropy run over ``chunk`` positions at a time under activation
    checkpointing, so at most one chunk's logits (``chunk x vocab``) exist, forwards and backwards.
    """
    import torch
    from torch.utils.checkpoint import checkpoint
    from transformers import Trainer

    class CausalLMTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._keep: torch.Tensor | None = None
            self._selected = False
            self._hidden: torch.Tensor | None = None
            head = self.model.get_output_embeddings()
            self._head = head
            self._post = logit_postprocess(self.model.config)
            self._hook = head.register_forward_pre_hook(self._select_trained_positions)

        def _select_trained_positions(self, _module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if self._keep is None:
                return None
            self._selected = True
            if chunk:
                self._hidden = args[0][self._keep]
                return (args[0][..., :0, :], *args[1:])  # the model's own logits: none
            return (args[0][self._keep].unsqueeze(0), *args[1:])

        def _chunk_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            logits = self._post(self._head(hidden)).float()
            return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")

        def _chunked_loss(self, targets: torch.Tensor) -> torch.Tensor:
            hidden, self._hidden = self._hidden, None
            assert hidden is not None and chunk
            loss = hidden.sum().float() * 0  # keeps a graph when no position is trained
            for h, t in zip(hidden.split(chunk), targets.split(chunk), strict=True):
                loss = loss + checkpoint(self._chunk_loss, h, t, use_reentrant=False)
            return loss

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            labels = inputs.pop("labels")
            targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
            keep = self._keep = targets != -100
            self._selected = False
            try:
                outputs = model(**inputs, use_cache=False)
            finally:
                self._keep = None
            if self._hidden is not None:
                loss = self._chunked_loss(targets[keep])
            else:
                logits = outputs.logits
                if not self._selected:  # a model that scores without calling its output embeddings: select now
                    logits = logits[keep]
                logits = logits.reshape(-1, logits.size(-1)).float()
                loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
            if num_items_in_batch is None:
                loss = loss / (targets != -100).sum().clamp(min=1)
            else:
                # like Trainer.compute_loss for a model that takes num_items_in_batch: the count covers every
                # rank and accumulation step, and DDP averages the gradients over the ranks
                loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device).clamp(min=1)
                if self.args.average_tokens_across_devices:
                    loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return (loss, outputs) if return_outputs else loss

        def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
            if "attention_mask" in inputs or self.args.include_num_input_tokens_seen != "non_padding":
                return super()._track_num_input_tokens(inputs)
            # a padding-free batch holds no padding, and its pad token may be a real one (eos) inside a row
            tokens = torch.as_tensor(inputs["input_ids"].numel(), device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()
            return None

    return CausalLMTrainer


def train_causal_lm(ctx: RunContext, *, packed: bool) -> StageResult:
    """Load the model, apply the method, train pt/sft rows with :class:`CausalLMTrainer`, save and export."""
    from transformers import TrainingArguments

    # only eval_loss (and perplexity) are reported: the gathered logits are not kept across eval batches
    model, args = load_model_and_arguments(ctx, TrainingArguments, prediction_loss_only=True)
    if not isolates_packed_rows(model):
        if packed:
            raise ValueError(
                f"training.packing: {type(model).__name__} builds its own attention mask, so packed documents "
                "would attend to each other; set training.packing: false"
            )
        flatten: Callable[[Sequence[int]], bool] = lambda _lengths: False
    else:
        ratio, fast = attention_cost_ratio(model.config), varlen(model)
        flatten = lambda lengths: flatten_is_cheaper(lengths, ratio, varlen_attention=fast)
    collator = Collator(pad_token_id=ctx.tokenizer.pad_token_id, flatten=flatten)
    chunk = LOSS_CHUNK if "chunked_loss" in ctx.config.spec.training.kernels else None
    return build_and_train(
        ctx,
        make_trainer_class(chunk),
        model,
        args,
        ctx.data.train,
        ctx.data.eval,
        perplexity=True,
        data_collator=collator,
    )
