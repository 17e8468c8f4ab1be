"""DataOptions: everything the data pipeline reads from a run, taken from the TrainerConfig once.

The steps (registry, sources, conversion, tokenization, mixing, packing, report) see these
few fields, never the whole spec; :meth:`DataOptions.from_config` is the one place that knows
where each lives in a TrainerConfig. This is the only data module that imports TrainerConfig.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.stages import STAGE_CONTRACTS, DataShape, Stage
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import DatasetRegistrySpec, DatasetSpec
from kubetune.trainer.data.processors.base import ProcessorOptions


@dataclass(frozen=True)
class DataOptions:
    stage: Stage
    cache_dir: str
    datasets: tuple[DatasetSpec, ...] = ()
    eval_datasets: tuple[DatasetSpec, ...] = ()
    registry: DatasetRegistrySpec | None = None  # spec.datasetRegistry: more training datasets, by name
    cutoff_len: int = 1024
    max_samples: int | None = None
    seed: int = 42
    mix_strategy: str = "concat"
    interleave_probs: tuple[float, ...] | None = None
    eval_split: float = 0.0
    train_on_prompt: bool = False
    mask_history: bool = False
    packing: bool = False  # resolved: spec.training.packing, else the stage's default
    work_dir: str = "."
    allow_private_urls: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: TrainerConfig) -> DataOptions:
        spec, training, runtime = config.spec, config.spec.training, config.runtime
        probs = training.interleave_probs
        return cls(
            stage=Stage(spec.stage),
            cache_dir=runtime.cache_dir,
            datasets=tuple(spec.datasets),
            eval_datasets=tuple(spec.eval_datasets),
            registry=spec.dataset_registry,
            cutoff_len=training.cutoff_len,
            max_samples=training.max_samples,
            seed=training.seed,
            mix_strategy=training.mix_strategy,
            interleave_probs=None if probs is None else tuple(probs),
            eval_split=training.eval_split,
            train_on_prompt=training.train_on_prompt,
            mask_history=training.mask_history,
            packing=spec.packing,
            work_dir=runtime.work_dir,
            allow_private_urls=tuple(runtime.allow_private_urls),
        )

    @classmethod
    def of(cls, value: DataOptions | TrainerConfig) -> DataOptions:
        """``value`` itself, or the options of a TrainerConfig (the pipeline's entry points take either)."""
        return value if isinstance(value, DataOptions) else cls.from_config(value)

    @property
    def shape(self) -> DataShape:
        """The row shape the stage trains on (what the tokenization step produces)."""
        return STAGE_CONTRACTS[self.stage].shape

    def processor_options(self) -> ProcessorOptions:
        return ProcessorOptions(self.cutoff_len, self.train_on_prompt, self.mask_history, self.packing)
