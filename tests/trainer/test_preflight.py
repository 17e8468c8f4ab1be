"""The trainer's GPU-fit preflight uses the model's real config.json, before weights load."""

from __future__ import annotations

import json

import pytest

from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.validation import parse_job
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.preflight import check_fit
from tests.conftest import job_doc

LLAMA_70B = {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}


def _config(tmp_path, method: str, gpu_type: str) -> TrainerConfig:
    job = parse_job(
        job_doc(
            {
                "model": {"source": "file:///m"},
                "datasets": [{"name": "d", "source": "file://d.json"}],
                "method": {"type": method},
                "resources": {"gpusPerNode": 1, "gpuType": gpu_type},
            }
        )
    )
    return TrainerConfig.from_job(job, output_uri="file:///o", cache_dir=str(tmp_path), scratch_dir=str(tmp_path))


def test_70b_full_on_one_t4_is_refused_before_loading(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    with pytest.raises(ConfigError, match=r"spec.resources.gpuType: needs ~\d+"):
        check_fit(_config(tmp_path, "full", "T4"), tmp_path)


def test_70b_qlora_on_h200_fits_and_reports_the_estimate(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    gib = check_fit(_config(tmp_path, "qlora", "H200"), tmp_path)
    assert 30 < gib < 141
