"""The preflight data check (``kubetune data check``): the trainer's data steps, with only a tokenizer.

Reads a dataset_info.json, checks each named dataset fits the stage, converts and tokenizes
every row exactly as a training run would (same converters, template, processors, cutoff
and packing), and returns one :class:`DatasetReport` per dataset. No model weights load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.stages import STAGE_CONTRACTS, Stage
from kubetune.trainer.data.conversion import convert_dataset
from kubetune.trainer.data.options import DataOptions
from kubetune.trainer.data.processors import Tokens
from kubetune.trainer.data.registry import check_stage, load_registry_file, parse_registry, split_names
from kubetune.trainer.data.report import DatasetReport
from kubetune.trainer.data.templates import get_template
from kubetune.trainer.data.tokenization import tokenize_dataset
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.fetch import fetch


@dataclass
class CheckOptions:
    stage: str = "sft"
    template: str | None = None
    cutoff_len: int = 1024
    packing: bool | None = None
    train_on_prompt: bool = False
    mask_history: bool = False
    max_samples: int | None = None
    seed: int = 42
    work_dir: Path = Path(".")
    cache_dir: Path = Path(".cache/kubetune")
    allow: list[str] = field(default_factory=list)

    def data_options(self) -> DataOptions:
        """The options a training run with these settings would give the data steps."""
        stage = Stage(self.stage)
        return DataOptions(
            stage=stage,
            cache_dir=str(self.cache_dir),
            cutoff_len=self.cutoff_len,
            max_samples=self.max_samples,
            seed=self.seed,
            train_on_prompt=self.train_on_prompt,
            mask_history=self.mask_history,
            packing=STAGE_CONTRACTS[stage].default_packing if self.packing is None else self.packing,
            work_dir=str(self.work_dir),
            allow_private_urls=tuple(self.allow),
        )


def _as_uri(value: str) -> str:
    return value if "://" in value else f"file://{Path(value).resolve()}"


def load_tokenizer_only(model: str, opts: CheckOptions) -> Any:
    """The tokenizer of ``model`` (a spec.model.source URI or a path); a .gguf file is read without its weights."""
    from transformers import AutoTokenizer

    uri = _as_uri(model)
    try:
        if uri.startswith("hf://"):
            from kubetune.trainer.storage.guard import guard_hub
            from kubetune.trainer.storage.hubs import hf_endpoint, probe

            guard_hub(hf_endpoint(), field="--model", allow=opts.allow)  # HF_ENDPOINT guarded as run and chat do
            probe(hf_endpoint(), field="--model", hub="the Hugging Face Hub", env="HF_ENDPOINT")
            tokenizer = AutoTokenizer.from_pretrained(uri.removeprefix("hf://"))
        else:
            path = fetch(
                uri, field="--model", work_dir=opts.work_dir, cache_dir=opts.cache_dir, kind="model", allow=opts.allow
            )
            if path.is_file() and path.suffix == ".gguf":
                tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            elif path.is_dir():
                tokenizer = AutoTokenizer.from_pretrained(str(path))
            else:
                raise ConfigError(f"--model: {path} is neither a .gguf file nor a Hugging Face model folder")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model: cannot load a tokenizer from {model}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check(
    dataset_info: str, names: str | list[str], model: str, opts: CheckOptions, tokenizer: Any = None
) -> list[DatasetReport]:
    """One report per dataset, in order. Raises DataError when a dataset does not fit the stage."""
    registry_uri = _as_uri(dataset_info)
    path = fetch(
        registry_uri,
        field="--dataset-info",
        work_dir=opts.work_dir,
        cache_dir=opts.cache_dir,
        kind="dataset",
        allow=opts.allow,
    )
    if path.is_dir():
        path, registry_uri = path / "dataset_info.json", registry_uri.rstrip("/") + "/dataset_info.json"
    specs = parse_registry(load_registry_file(path, registry_uri), registry_uri, split_names(names))
    check_stage(specs, opts.stage)
    data_opts = opts.data_options()
    loaded = []
    for spec in specs:
        data = fetch(
            spec.source,
            field=f"dataset {spec.name!r}",
            work_dir=opts.work_dir,
            cache_dir=opts.cache_dir,
            kind="dataset",
            dataset=spec,
            allow=opts.allow,
        )
        loaded.append(convert_dataset(spec, data, max_samples=data_opts.max_samples, seed=data_opts.seed))
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer_only(model, opts)
    try:
        template = get_template(opts.template, tokenizer)
    except ValueError as exc:
        raise ConfigError(f"--template: {exc}") from None
    tokens = Tokens(tokenizer)
    shape, popts = data_opts.shape, data_opts.processor_options()
    for ds in loaded:
        tokenize_dataset(ds, template, tokenizer, tokens, shape=shape, opts=popts, cache_dir=data_opts.cache_dir)
    return [ds.report for ds in loaded if ds.report is not None]
