"""Open the base model and its tokenizer from a resolved local folder or a .gguf file.

A .gguf file is dequantized once into a Hugging Face folder in the cache (keyed by the
file's sha256, with a completion marker), so later runs load plain safetensors fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.fetch import fetch

log = get_logger(__name__)
COMPLETE = ".kubetune-complete"


@dataclass(frozen=True)
class ModelRef:
    path: Path  # a Hugging Face model folder
    source: str
    revision: str | None = None
    sha256: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def gguf_to_folder(gguf: Path, cache_dir: Path) -> tuple[Path, str]:
    """Dequantize a .gguf file into a cached HF folder; safe against concurrent and interrupted runs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = _sha256(gguf)
    target = cache_dir / "models" / f"gguf-{sha[:16]}"
    if (target / COMPLETE).exists():
        return target, sha
    log.info("dequantizing %s into %s (once; later runs reuse it)", gguf.name, target)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model is marked quantized and refuses to save: rebuild a plain one from its
    # config and the dequantized state dict.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF rebuild mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE).write_text(sha + "\n")
    if target.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return target, sha


def resolve_model(config: TrainerConfig) -> ModelRef:
    spec = config.spec.model
    path = fetch(
        spec.source,
        field="spec.model.source",
        work_dir=config.runtime.work_dir,
        cache_dir=config.runtime.cache_dir,
        kind="model",
        revision=spec.revision,
        allow=config.runtime.allow_private_urls,
    )
    if path.is_file() and path.suffix == ".gguf":
        folder, sha = gguf_to_folder(path, Path(config.runtime.cache_dir))
        return ModelRef(path=folder, source=spec.source, revision=spec.revision, sha256=sha)
    if path.is_file():
        raise ConfigError(f"spec.model.source: {path} is a file but not a .gguf; give a Hugging Face model folder")
    if not (path / "config.json").exists():
        raise ConfigError(f"spec.model.source: {path} has no config.json; it is not a Hugging Face model folder")
    revision = (
        (path / ".kubetune-revision").read_text().strip() if (path / ".kubetune-revision").exists() else spec.revision
    )
    return ModelRef(path=path, source=spec.source, revision=revision)


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(precision: str) -> Any:
    import torch

    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "fp32":
        return torch.float32
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(ref: ModelRef, config: TrainerConfig, *, model_class: Any = None, **kwargs: Any) -> Any:
    """The base model, quantized when the spec asks for it (QLoRA)."""
    from transformers import AutoModelForCausalLM

    spec = config.spec
    dtype = torch_dtype(spec.training.precision)
    quantization = spec.quantization
    if quantization is not None:
        from kubetune.trainer.models.quantization import bnb_config

        kwargs["quantization_config"] = bnb_config(quantization, dtype)
    cls = model_class or AutoModelForCausalLM
    if "attn_implementation" not in kwargs:
        from kubetune.trainer.models.kernels import resolve_for_training

        kwargs["attn_implementation"] = resolve_for_training(spec.training).attention
    model = cls.from_pretrained(ref.path, dtype=dtype, trust_remote_code=spec.model.trust_remote_code, **kwargs)
    if "liger" in spec.training.kernels:
        from kubetune.trainer.models.kernels import apply_liger

        apply_liger(model)
    if spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model
