"""dataset_info.json → DatasetSpec: sources, per-key defaults kept, loud failures."""

from __future__ import annotations

import pytest

from kubetune.trainer.data.registry import check_stage, entry_to_spec, join_relative, parse_registry, split_names
from kubetune.trainer.errors import DataError

BASE = "file:///data/dataset_info.json"


def test_every_key_maps_and_unset_keys_keep_defaults() -> None:
    entry = {
        "file_name": "sub/x.jsonl",
        "formatting": "sharegpt",
        "ranking": True,
        "subset": "en",
        "split": "test",
        "folder": "d",
        "num_samples": 7,
        "columns": {"messages": "msgs", "chosen": "c", "rejected": "r"},
        "tags": {"role_tag": "role", "content_tag": "content"},
    }
    ds = entry_to_spec("x", entry, BASE)
    assert ds.source == "file:///data/sub/x.jsonl"
    assert (ds.formatting, ds.ranking, ds.subset, ds.split, ds.folder, ds.num_samples) == (
        "sharegpt",
        True,
        "en",
        "test",
        "d",
        7,
    )
    assert (ds.columns.messages, ds.columns.chosen, ds.columns.rejected) == ("msgs", "c", "r")
    assert ds.columns.prompt == "instruction" and ds.columns.response == "output"
    assert (ds.tags.role_tag, ds.tags.content_tag) == ("role", "content")
    # the LLaMA-Factory trap: these became None there
    assert (
        ds.tags.user_tag,
        ds.tags.assistant_tag,
        ds.tags.system_tag,
        ds.tags.observation_tag,
        ds.tags.function_tag,
    ) == ("human", "gpt", "system", "observation", "function_call")


def test_null_column_keeps_its_default() -> None:
    ds = entry_to_spec("p", {"file_name": "t.txt", "columns": {"prompt": "text", "query": None}}, BASE)
    assert ds.columns.prompt == "text" and ds.columns.query == "input"


@pytest.mark.parametrize(
    ("base", "name", "want"),
    [
        ("s3://bkt/reg/dataset_info.json", "a.json", "s3://bkt/reg/a.json"),
        ("https://h.example/x/dataset_info.json", "d/a.json", "https://h.example/x/d/a.json"),
        ("configmap://data/dataset_info.json", "a.jsonl", "configmap://data/a.jsonl"),
        ("pvc://claim/dir/dataset_info.json", "a.json", "pvc://claim/dir/a.json"),
        ("file:///r/dataset_info.json", "/abs/a.json", "file:///abs/a.json"),
        ("file:///r/dataset_info.json", "s3://other/a.json", "s3://other/a.json"),
    ],
    ids=["s3", "https", "configmap", "pvc", "absolute", "uri"],
)
def test_file_name_resolves_against_the_registry(base: str, name: str, want: str) -> None:
    assert join_relative(base, name) == want


def test_source_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    both = {"hf_hub_url": "org/a", "ms_hub_url": "ms-org/a", "file_name": "a.json"}
    assert entry_to_spec("a", both, BASE).source == "hf://org/a"
    assert entry_to_spec("a", {"ms_hub_url": "ms-org/a"}, BASE).source == "ms://ms-org/a"
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert entry_to_spec("a", both, BASE).source == "ms://ms-org/a"
    assert (
        entry_to_spec("a", {"cloud_file_name": "s3://bkt/k.json", "file_name": "x"}, BASE).source == "s3://bkt/k.json"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"file_name": "a", "colums": {}}, "unknown key\\(s\\) colums"),
        ({"file_name": "a", "columns": {"promt": "x"}}, "unknown columns key\\(s\\) promt"),
        ({"file_name": "a", "tags": {"role": "x"}}, "unknown tags key\\(s\\) role"),
        ({"script_url": "s"}, "script_url .* not supported"),
        ({"cloud_file_name": "gs://b/a.json"}, "gs:// and gcs:// are not supported"),
        ({"om_hub_url": "o/a"}, "OpenMind"),
        ({"formatting": "alpaca"}, "no source"),
        ({"file_name": "a", "formatting": "xml"}, "formatting"),
        ({"file_name": "a", "num_samples": 0}, "numSamples"),
        ("not an object", "must be an object"),
    ],
    ids=["key", "column", "tag", "script", "gcs", "openmind", "no-source", "formatting", "num-samples", "type"],
)
def test_bad_entries_fail_naming_the_entry(entry: object, message: str) -> None:
    with pytest.raises(DataError, match=f"entry 'e'.*{message}"):
        entry_to_spec("e", entry, BASE)


def test_names_and_stage_checks() -> None:
    registry = {
        "alpaca_en": {"file_name": "a.json"},
        "pairs": {"file_name": "p.json", "ranking": True, "columns": {"chosen": "c", "rejected": "r"}},
    }
    assert [d.name for d in parse_registry(registry, BASE, split_names("pairs, alpaca_en"))] == ["pairs", "alpaca_en"]
    with pytest.raises(DataError, match="'alpaca' is not in dataset_info.json.*did you mean alpaca_en"):
        parse_registry(registry, BASE, ["alpaca"])
    specs = parse_registry(registry, BASE, ["alpaca_en", "pairs"])
    with pytest.raises(DataError, match="dataset 'pairs': ranking: stage sft does not train on pairwise data"):
        check_stage(specs, "sft")
    with pytest.raises(DataError, match="dataset 'alpaca_en': ranking: stage dpo needs pairwise data"):
        check_stage(specs, "dpo")
    check_stage(specs[1:], "rm")
