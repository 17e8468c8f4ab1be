"""The evaluation's sequence: prompts read before training (bad data fails before any weights), both models after."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.data.conversion import convert_dataset
from kubetune.trainer.data.options import DataOptions
from kubetune.trainer.data.sources import fetch_dataset
from kubetune.trainer.errors import DataError
from kubetune.trainer.evaluation.gate import EvaluationResult, Scores, decide
from kubetune.trainer.evaluation.measure import eval_loss, generate, perplexity, reward_score, rule_scores
from kubetune.trainer.logging import get_logger
from kubetune.trainer.models.loader import ModelRef, load_model, torch_dtype

log = get_logger(__name__)
SAMPLE_ANSWERS = 5  # prompts whose answers (both models) go into the manifest


@dataclass
class PromptSet:
    name: str
    examples: list[dict[str, Any]] = field(default_factory=list)  # converted rows: prompt, response, system, tools


def load_prompt_sets(config: TrainerConfig) -> list[PromptSet]:
    """``spec.evaluation.prompts``, fetched and converted like any dataset; a set without one usable prompt fails
    the run here, before the model is fetched."""
    ev = config.spec.evaluation
    if ev is None:
        return []
    sets = []
    opts = DataOptions.from_config(config)
    for i, ds in enumerate(ev.prompts):
        where = f"spec.evaluation.prompts[{i}]"
        loaded = convert_dataset(ds, fetch_dataset(ds, opts, where), max_samples=opts.max_samples, seed=opts.seed)
        if loaded.report is not None:
            for line in loaded.report.lines():
                log.info("%s: %s", where, line)
        usable = [ex for _, ex in loaded.examples if len(ex["prompt"]) % 2 == 1]
        if not usable:
            raise DataError(
                f"{where} ({ds.name}): no usable prompt in {ds.source} "
                f"({loaded.report.rows if loaded.report else 0} rows read); each row needs a user turn to answer"
            )
        sets.append(PromptSet(ds.name, usable))
    return sets


def _reference(example: dict[str, Any]) -> str:
    response = example.get("response") or []
    return str(response[0].get("content", "")) if len(response) == 1 else ""


def _question(example: dict[str, Any]) -> str:
    return str(example["prompt"][-1].get("content", ""))


@dataclass
class _Prompts:
    texts: list[str]
    references: list[str]
    questions: list[str]


def _render(prompt_sets: list[PromptSet], template: Any, limit: int) -> _Prompts:
    examples = [ex for s in prompt_sets for ex in s.examples][:limit]
    return _Prompts(
        texts=[template.prompt_text(ex["prompt"], ex.get("system", ""), ex.get("tools", "")) for ex in examples],
        references=[_reference(ex) for ex in examples],
        questions=[_question(ex) for ex in examples],
    )


def _on_device(model: Any) -> Any:
    import torch

    if torch.cuda.is_available() and getattr(model, "hf_device_map", None) is None:
        return model.to("cuda")
    return model


def _load(config: TrainerConfig, ref: ModelRef, adapter: Path | None) -> Any:
    """``ref``'s model (quantized as the training was), with an adapter folder applied when given. On GPUs it is
    spread over the node's devices (``device_map="auto"``): a model trained sharded need not fit one GPU."""
    import torch

    placement = {"device_map": "auto"} if torch.cuda.is_available() else {}
    model = load_model(ref, config, **placement)
    if config.spec.training.gradient_checkpointing:  # a training setting; generation wants its KV cache
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    model.config.use_cache = True
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model


def load_trained(config: TrainerConfig, base: ModelRef, artifact_dir: Path) -> Any:
    """What the artifact folder holds: an adapter on the base model, or a whole model."""
    if (artifact_dir / "adapter_config.json").exists():
        return _load(config, base, artifact_dir)
    return _load(config, replace(base, path=artifact_dir), None)


def _free(model: Any) -> None:
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _measure(
    model: Any,
    tokenizer: Any,
    template: Any,
    config: TrainerConfig,
    rows: list[dict[str, Any]],
    prompts: _Prompts,
    reward_model: Any,
) -> tuple[Scores, list[str]]:
    ev = config.spec.evaluation
    assert ev is not None
    batch = config.spec.training.batch_size
    stop = str(getattr(template, "stop", "") or "")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss = eval_loss(model, rows, pad, batch)
    answers: list[str] = []
    if prompts.texts:
        answers = generate(
            model, tokenizer, prompts.texts, max_new_tokens=ev.max_new_tokens, stop=stop, batch_size=max(batch, 8)
        )
    score, per_rule = rule_scores(ev.rules, answers, prompts.references)
    reward = reward_score(reward_model, tokenizer, prompts.texts, answers, stop=stop, batch_size=batch)
    scores = Scores(
        eval_loss=loss,
        perplexity=perplexity(loss),
        rule_score=score,
        reward=reward,
        prompts=len(answers) or None,
        rules=per_rule,
    )
    return scores, answers


def evaluate(
    config: TrainerConfig,
    *,
    model_ref: ModelRef,
    tokenizer: Any,
    template: Any,
    eval_rows: list[dict[str, Any]],
    prompt_sets: list[PromptSet],
    artifact_dir: Path,
    adapter_init: Path | None = None,
    reward_model_path: Path | None = None,
) -> EvaluationResult:
    """The base model (with ``spec.model.adapter`` when given) and the trained one from ``artifact_dir``, on the
    same evaluation rows and prompts; the gate's checks over both."""
    spec = config.spec
    ev = spec.evaluation
    assert ev is not None
    loss_rows = eval_rows if spec.stage in ("pt", "sft") else []
    prompts = _render(prompt_sets, template, ev.max_prompts)
    reward_model = None
    if reward_model_path is not None:
        from kubetune.trainer.models.reward import load_reward_model

        reward_model = _on_device(
            load_reward_model(
                reward_model_path,
                model_ref,
                dtype=torch_dtype(spec.training.precision),
                trust_remote_code=spec.model.trust_remote_code,
                field="spec.evaluation.rewardModel",
            )
        )
    log.info("evaluating the base model: %d eval rows, %d prompts", len(loss_rows), len(prompts.texts))
    model = _load(config, model_ref, adapter_init)
    base, base_answers = _measure(model, tokenizer, template, config, loss_rows, prompts, reward_model)
    _free(model)
    log.info("evaluating the trained model")
    model = load_trained(config, model_ref, artifact_dir)
    trained, trained_answers = _measure(model, tokenizer, template, config, loss_rows, prompts, reward_model)
    _free(model)
    if reward_model is not None:
        _free(reward_model)
    sample = [
        {"prompt": q[:500], "reference": r[:500], "base": b[:500], "trained": t[:500]}
        for q, r, b, t in zip(
            prompts.questions[:SAMPLE_ANSWERS],
            prompts.references,
            base_answers,
            trained_answers,
            strict=False,
        )
    ]
    result = EvaluationResult(base=base, trained=trained, checks=decide(ev.gate, base, trained), answers=sample)
    log.info("%s", result.summary())
    return result
