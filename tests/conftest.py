"""Shared fixtures. Markers: slow (trains or starts heavy parts; still run by `make test`),
gpu (skipped without CUDA), cluster (skipped without KUBECONFIG)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KUBETUNE_CACHE_DIR", ROOT / ".cache" / "kubetune"))
SMOLLM_GGUF = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = False
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        pass
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if (
            "cluster" in item.keywords
            and not os.environ.get("KUBECONFIG")
            and item.get_closest_marker("cluster").kwargs.get("only")
        ):
            item.add_marker(pytest.mark.skip(reason="needs KUBECONFIG"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    if not SMOLLM_GGUF.exists():
        pytest.fail(f"{SMOLLM_GGUF} is missing: run `make model` (make test does it)")
    return SMOLLM_GGUF


@pytest.fixture(scope="session")
def smollm_dir(smollm_gguf: Path, cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (dequantized once, cached)."""
    from kubetune.trainer.models.loader import gguf_to_folder

    folder, _ = gguf_to_folder(smollm_gguf, cache_dir)
    return folder


@pytest.fixture(scope="session")
def tokenizer(smollm_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(smollm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with SmolLM2's real tokenizer: fast CPU training."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_job(path: Path, spec: dict[str, Any], name: str = "test-job") -> Path:
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def job_doc(spec: dict[str, Any], name: str = "test-job") -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Any:
    """Code under test that configures logging for a whole process (kopf.configure, basicConfig) binds handlers to
    the sys.stderr of that moment, a test's capture closed right after: each test gets the root logger back as it
    was, so no later test meets a handler writing to a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
