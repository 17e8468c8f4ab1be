"""kubetune.api: the FineTuneJob API (``kubetune.io/v1alpha1``), the single schema source.

Imports pydantic and PyYAML only; used by the operator, the trainer and the CLI alike.
"""

from kubetune.api.stages import STAGE_CONTRACTS, DataShape, Stage
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
)
from kubetune.api.validation import InvalidFineTuneJob, Problem, load_jobs, parse_job

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "STAGE_CONTRACTS",
    "VERSION",
    "DataShape",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "InvalidFineTuneJob",
    "Problem",
    "Stage",
    "TrainerConfig",
    "load_jobs",
    "parse_job",
]
