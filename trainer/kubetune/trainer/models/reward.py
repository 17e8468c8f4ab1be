"""Open a reward model produced by an ``rm`` job: a LoRA adapter on the base, or a whole model folder.

An ``rm`` job with lora/qlora saves a sequence-classification adapter (LoRA plus the ``score`` head
in ``modules_to_save``); it is applied to *this* job's base model, which must be the one the reward
model was trained from (as in LLaMA-Factory). With full/freeze the folder is a complete model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.models.loader import ModelRef

log = get_logger(__name__)


def load_reward_model(
    path: Path,
    base: ModelRef,
    *,
    dtype: Any = None,
    trust_remote_code: bool = False,
    field: str = "spec.training.rewardModel",
) -> Any:
    """A frozen ``AutoModelForSequenceClassification`` with one output, in eval mode (``field`` names the spec
    field in errors)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{field}: {path} is not a folder; give the output of an rm job")
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.exists():
        task = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("task_type")
        if task != "SEQ_CLS":
            raise ConfigError(
                f"{field}: {path} holds a {task} adapter, not a reward model (SEQ_CLS); train one with stage: rm"
            )
        from peft import PeftModel

        tokenizer = AutoTokenizer.from_pretrained(path if (path / "tokenizer_config.json").exists() else base.path)
        model = AutoModelForSequenceClassification.from_pretrained(
            base.path,
            num_labels=1,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    elif (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures", [])):
            raise ConfigError(
                f"{field}: {path} is a {config.get('architectures')} model, not a reward model; "
                "train one with stage: rm"
            )
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code
        )
    else:
        raise ConfigError(
            f"{field}: {path} has neither adapter_config.json nor config.json; give the output folder of an rm job"
        )
    model.requires_grad_(False)
    model.eval()
    log.info("reward model loaded from %s", path)
    return model
