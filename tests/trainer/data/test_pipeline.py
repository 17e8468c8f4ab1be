"""Integration: a dataset_info.json mixing every format, read from a folder, S3 (moto over HTTP) and an HTTP
server, through the same loader the trainer runs; every bad row reported with dataset, row index and reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import trainer_config
from kubetune.api.trainer_config import RuntimeSpec, TrainerConfig
from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.trainer.data import tokenization
from kubetune.trainer.data.loader import convert_all, tokenize_all
from kubetune.trainer.data.templates import get_template
from kubetune.trainer.errors import DataError


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows)


def sg(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": r, "value": v} for r, v in turns]


ALPACA = [  # local jsonl; rows 1-3 are bad
    {"instruction": "Add", "input": "1 2", "output": "3", "history": [["Hi", "Hello"]]},
    b"{not json\n",
    {"question": "wrong columns", "answer": "x"},
    b'{"instruction": "caf\xe9", "output": "latin-1"}\n',
    {"instruction": "Sub", "input": "3 1", "output": "2"},
]
SHAREGPT = [  # on S3; rows 1-2 are bad
    {"conversations": sg(("system", "Be kind."), ("human", "Hi"), ("gpt", "Hello!")), "tools": [{"name": "f"}]},
    {"conversations": sg(("gpt", "I speak first"), ("human", "no"))},
    {"conversations": []},
    {
        "conversations": sg(
            ("human", "2+2?"), ("function_call", '{"name": "calc"}'), ("observation", "4"), ("gpt", "4")
        )
    },
]
OPENAI = [  # over HTTP; row 1 is bad
    {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    },
    {"messages": [{"role": "user", "content": "only a question"}]},
    {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]},
]
IMAGES = [  # local json; row 1 names a missing image
    {"instruction": "<image>What is this?", "output": "A cat.", "images": ["img/cat.png"]},
    {"instruction": "<image>And this?", "output": "A dog.", "images": ["img/dog.png"]},
]


@pytest.fixture
def registry(tmp_path: Path, s3_bucket: str, http_root: tuple[str, Path]) -> Path:
    import boto3

    base_url, http_dir = http_root
    local = tmp_path / "reg"
    (local / "img").mkdir(parents=True)
    (local / "img" / "cat.png").write_bytes(b"\x89PNG")
    (local / "alpaca.jsonl").write_bytes(jsonl(ALPACA))
    (local / "images.json").write_text(json.dumps(IMAGES))
    (local / "text.txt").write_text("one line of text\nanother line\n")
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="data/sharegpt.jsonl", Body=jsonl(SHAREGPT))
    (http_dir / "openai.jsonl").write_bytes(jsonl(OPENAI))
    info = {
        "alpaca_local": {"file_name": "alpaca.jsonl", "columns": {"history": "history"}},
        "sharegpt_s3": {
            "cloud_file_name": f"s3://{s3_bucket}/data/sharegpt.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        },
        "openai_http": {
            "file_name": f"{base_url}/openai.jsonl",
            "formatting": "openai",
            "columns": {"messages": "messages"},
        },
        "images_local": {"file_name": "images.json", "columns": {"images": "images"}},
        "text_local": {"file_name": "text.txt", "columns": {"prompt": "text"}},
    }
    (local / "dataset_info.json").write_text(json.dumps(info))
    return local


def config(tmp_path: Path, registry_uri: str, names: list[str], **training: Any) -> TrainerConfig:
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"source": "file:///unused"},
            "datasetRegistry": {"source": registry_uri, "names": names},
            "training": {"cutoffLen": 256, **training},
        }
    )
    runtime = RuntimeSpec(
        job_name="t",
        output_uri="file:///dev/null",
        work_dir=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        scratch_dir=str(tmp_path / "scratch"),
        allow_private_urls=["127.0.0.1"],
    )
    return TrainerConfig(spec=spec, runtime=runtime)


SFT_NAMES = ["alpaca_local", "sharegpt_s3", "openai_http", "images_local"]


def test_registry_mixing_every_format_and_source(registry: Path, tmp_path: Path, tokenizer: Any) -> None:
    cfg = config(tmp_path, f"file://{registry}/dataset_info.json", SFT_NAMES, mixStrategy="interleave_over")
    converted = convert_all(cfg)
    data = tokenize_all(cfg, tokenizer, get_template(None, tokenizer), converted)
    reports = {r.name: r.to_dict() for r in data.reports}
    assert {n: (r["rows"], r["valid"], r["dropped"]) for n, r in reports.items()} == {
        "alpaca_local": (5, 2, 3),
        "sharegpt_s3": (4, 2, 2),
        "openai_http": (3, 2, 1),
        "images_local": (2, 1, 1),
    }
    reasons = {n: {k: v["rows"] for k, v in r["reasons"].items()} for n, r in reports.items()}
    assert reasons == {
        "alpaca_local": {"malformed JSON": [1], "empty prompt": [2], "not UTF-8": [3]},
        "sharegpt_s3": {"invalid role": [1], "empty conversation": [2]},
        "openai_http": {"invalid message count": [1]},
        "images_local": {"missing image file": [1]},
    }
    # interleave_over: round robin until every dataset ran out once: 2 + 2 + 2 + 1 (+ none repeated)
    assert len(data.train) == 7 and all(set(row) == {"input_ids", "labels"} for row in data.train)
    texts = [tokenizer.decode(row["input_ids"]) for row in data.train]
    assert "Add\n1 2" in texts[0] and "Be kind." in texts[1] and "# Tools" in texts[1]
    assert {p["name"]: p["sha256"][:6] for p in data.provenance}.keys() == set(SFT_NAMES)
    assert reports["alpaca_local"]["tokenLengths"]["max"] > 0


def test_registry_on_s3_resolves_relative_files_and_fails_on_empty_datasets(
    registry: Path, tmp_path: Path, s3_bucket: str, tokenizer: Any
) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(
        Bucket=s3_bucket,
        Key="reg/dataset_info.json",
        Body=json.dumps(
            {
                "good": {"file_name": "good.jsonl"},
                "all_bad": {"file_name": "bad.jsonl", "formatting": "sharegpt"},
            }
        ).encode(),
    )
    s3.put_object(Bucket=s3_bucket, Key="reg/good.jsonl", Body=jsonl(ALPACA[:1]))
    s3.put_object(Bucket=s3_bucket, Key="reg/bad.jsonl", Body=jsonl([{"conversations": sg(("human", "q"))}]))
    cfg = config(tmp_path, f"s3://{s3_bucket}/reg/dataset_info.json", ["good", "all_bad"])
    train, _ = convert_all(cfg)
    assert [ds.spec.source for ds in train] == [f"s3://{s3_bucket}/reg/good.jsonl", f"s3://{s3_bucket}/reg/bad.jsonl"]
    with pytest.raises(
        DataError, match="(?s)no valid rows in dataset\\(s\\) all_bad.*invalid message count \\(rows 0\\)"
    ):
        tokenize_all(cfg, tokenizer, get_template(None, tokenizer), (train, []))


def test_pretraining_packs_and_tokenized_rows_are_cached(
    registry: Path, tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, f"file://{registry}/dataset_info.json", ["text_local"], cutoffLen=4)
    cfg.spec.stage = "pt"
    template = get_template(None, tokenizer)
    first = tokenize_all(cfg, tokenizer, template, convert_all(cfg))
    assert all(len(r["input_ids"]) == 4 for r in first.train) and first.packing is not None
    assert first.reports[0].packing is not None
    assert list((tmp_path / "cache" / "tokenized").rglob("*.json"))

    def no_processing(*_: Any) -> Any:
        raise AssertionError("re-tokenized although the cache holds this dataset")

    monkeypatch.setattr(tokenization, "get_processor", lambda shape: no_processing)
    again = tokenize_all(cfg, tokenizer, template, convert_all(cfg))
    assert again.train == first.train and again.reports[0].to_dict() == first.reports[0].to_dict()
    cfg.spec.training.cutoff_len = 5  # another cutoff is another cache entry
    with pytest.raises(AssertionError, match="re-tokenized"):
        tokenize_all(cfg, tokenizer, template, convert_all(cfg))


def test_kto_string_labels_warn_and_bad_labels_drop(tmp_path: Path, tokenizer: Any) -> None:
    folder = tmp_path / "kto"
    folder.mkdir()
    (folder / "k.jsonl").write_bytes(
        jsonl(
            [
                {"instruction": "q1", "output": "good", "label": True},
                {"instruction": "q2", "output": "bad", "label": "false"},
                {"instruction": "q3", "output": "?", "label": 1},
                {"instruction": "q4", "output": "meh", "label": False},
            ]
        )
    )
    (folder / "dataset_info.json").write_text(
        json.dumps({"kto": {"file_name": "k.jsonl", "columns": {"kto_tag": "label"}}})
    )
    cfg = config(tmp_path, f"file://{folder}/dataset_info.json", ["kto"])
    cfg.spec.stage = "kto"
    data = tokenize_all(cfg, tokenizer, get_template("chatml", tokenizer), convert_all(cfg))
    report = data.reports[0].to_dict()
    assert report["reasons"] == {
        "KTO label is not a boolean": {"count": 1, "rows": [2], "example": "column 'label' holds 1"}
    }
    assert report["warnings"]["KTO label given as a string"]["rows"] == [1]
    assert [r["label"] for r in data.train] == [True, False, False]
    assert data.train[0]["KL_completion_ids"] == data.train[2]["completion_ids"]


def test_registry_stage_mismatch_fails_before_reading_data(registry: Path, tmp_path: Path) -> None:
    info = json.loads((registry / "dataset_info.json").read_text())
    info["pairs"] = {"file_name": "alpaca.jsonl", "ranking": True, "columns": {"chosen": "c", "rejected": "r"}}
    (registry / "dataset_info.json").write_text(json.dumps(info))
    cfg = config(tmp_path, f"file://{registry}/dataset_info.json", ["alpaca_local", "pairs"])
    with pytest.raises(DataError, match="dataset 'pairs': ranking: stage sft does not train on pairwise data"):
        convert_all(cfg)


def test_cli_data_check_json(registry: Path, tmp_path: Path, smollm_gguf: Path, capsys: pytest.CaptureFixture) -> None:
    from kubetune.cli import main

    argv = [
        "data",
        "check",
        "--dataset-info",
        str(registry / "dataset_info.json"),
        "--dataset",
        "alpaca_local,openai_http,images_local",
        "--stage",
        "sft",
        "--model",
        str(smollm_gguf),
        "--cutoff-len",
        "64",
        "--json",
        "--cache-dir",
        str(tmp_path / "cli-cache"),
        "--allow-private-url",
        "127.0.0.1",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(d["name"], d["rows"], d["valid"], d["dropped"]) for d in out] == [
        ("alpaca_local", 5, 2, 3),
        ("openai_http", 3, 2, 1),
        ("images_local", 2, 1, 1),
    ]
    assert out[0]["reasons"]["malformed JSON"]["rows"] == [1] and out[0]["tokenLengths"]["p50"] > 0
    bad = [*argv]
    bad[bad.index("sft")] = "dpo"
    assert main(bad) == 4  # EXIT_DATA_ERROR, before any tokenizer loads
    assert "dataset 'alpaca_local': ranking: stage dpo needs pairwise data" in capsys.readouterr().err


def test_eval_split_and_eval_datasets(registry: Path, tmp_path: Path, tokenizer: Any) -> None:
    template = get_template("chatml", tokenizer)
    cfg = config(tmp_path, f"file://{registry}/dataset_info.json", ["alpaca_local", "openai_http"], evalSplit=0.25)
    data = tokenize_all(cfg, tokenizer, template, convert_all(cfg))
    assert (len(data.train), len(data.eval)) == (3, 1)
    cfg.spec.training.eval_split = 0.0
    from kubetune.api.v1alpha1 import DatasetSpec

    cfg.spec.eval_datasets = [
        DatasetSpec.model_validate(
            {"name": "held", "source": f"file://{registry}/images.json", "columns": {"images": "images"}}
        )
    ]
    data = tokenize_all(cfg, tokenizer, template, convert_all(cfg))
    assert (len(data.train), len(data.eval)) == (4, 1)
    assert [p["role"] for p in data.provenance] == ["train", "train", "eval"]


def test_hub_dataset_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.trainer.errors import ConfigError

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    spec = FineTuneJobSpec.model_validate(
        {"model": {"source": "file:///unused"}, "datasets": [{"name": "hub", "source": "hf://org/some-dataset"}]}
    )
    cfg = TrainerConfig(
        spec=spec,
        runtime=RuntimeSpec(
            job_name="t",
            output_uri="file:///dev/null",
            cache_dir=str(tmp_path),
            scratch_dir=str(tmp_path),
            allow_private_urls=["127.0.0.1"],
        ),
    )
    with pytest.raises(
        ConfigError, match="spec.datasets\\[0\\].source: the Hugging Face Hub at http://127.0.0.1:9 is unreachable"
    ):
        convert_all(cfg)


def test_registry_from_a_configmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "configmaps"
    (root / "my-data").mkdir(parents=True)
    (root / "my-data" / "dataset_info.json").write_text(
        json.dumps({"chat": {"file_name": "chat.jsonl", "formatting": "sharegpt"}})
    )
    (root / "my-data" / "chat.jsonl").write_bytes(jsonl([{"conversations": sg(("human", "hi"), ("gpt", "hello"))}]))
    monkeypatch.setattr(trainer_config, "CONFIGMAP_ROOT", str(root))
    cfg = config(tmp_path, "configmap://my-data/dataset_info.json", ["chat"])
    train, _ = convert_all(cfg)
    assert train[0].spec.source == "configmap://my-data/chat.jsonl"
    assert train[0].report is not None and (train[0].report.rows, len(train[0].examples)) == (1, 1)
