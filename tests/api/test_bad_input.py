"""Adversarial FineTuneJobs: validation agrees with the CRD and with what the pod accepts, before any GPU is reserved.

Every class of bad value from the security review, many variants each, generated from the CRD schema where the
space is large (every integer, number and boolean field): a field error naming the path, never another exception,
never a 1 MB echo. Plus the bounded YAML loader (alias bombs, depth, duplicates, multi-document files) and the
configmap:// mount path shared by the Job builder and the trainer.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api import trainer_config
from kubetune.api.checks import parse_quantity, quantity_problem
from kubetune.api.crdgen import build_crd, crd_json_schema
from kubetune.api.trainer_config import CONFIGMAP_ROOT, MAX_CONFIGMAP_BYTES, TrainerConfig, configmap_size_problem
from kubetune.api.v1alpha1 import TEMPLATE_NAMES
from kubetune.api.validation import InvalidFineTuneJob, format_path, jobs_from_documents, load_jobs, parse_job
from kubetune.api.yamlload import MAX_BYTES, YamlRefused, load_documents, read_documents
from tests.conftest import job_doc

LINE_LIMIT = 400  # no problem line echoes more than this, whatever the value was

VALID = job_doc(
    {
        "stage": "sft",
        "model": {
            "source": "hf://org/model",
            "quantization": {"bits": 4},
            "adapter": {"source": "s3://bkt/adapter"},
            "credentialsSecret": "hf-token",
            "parameters": "7B",
        },
        "datasets": [{"name": "d", "source": "s3://bkt/d.json", "numSamples": 100}],
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "loraplusRatio": 16.0}},
        "training": {
            "epochs": 1,
            "seed": 7,
            "mixStrategy": "interleave_under",
            "preference": {"beta": 0.1},
            "kto": {"beta": 0.1},
            "ppo": {"klCoef": 0.1},
        },
        "resources": {
            "nodes": 1,
            "gpusPerNode": 1,
            "gpuType": "H100",
            "cpu": "4",
            "memory": "32Gi",
            "serviceAccountName": "trainer",
            "priorityClassName": "high",
            "cacheClaim": "model-cache",
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        },
        "checkpointing": {"everySteps": 10},
        "evaluation": {
            "prompts": [{"name": "p", "source": "s3://bkt/p.json"}],
            "rules": [{"type": "answer", "weight": 1}],
            "rewardModel": {"source": "s3://bkt/rm"},
            "gate": {"minRuleScore": 0.5, "minReward": 0.1},
        },
        "output": {
            "uri": "s3://bkt/out",
            "credentialsSecret": "s3-creds",
            "hub": {"repo": "org/x", "credentialsSecret": "hf"},
        },
        "runPolicy": {"backoffLimit": 1, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60},
        "queueName": "team-a",
    },
    name="valid-job",
)
SPEC_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
CRD = jsonschema.Draft4Validator(crd_json_schema())


def with_value(path: tuple[str | int, ...], value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(base or VALID)
    node: Any = doc["spec"]
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value
    return doc


def problems_of(doc: Any) -> list[str]:
    """The problem lines of an invalid document (an AssertionError when it validates); only InvalidFineTuneJob
    may leave parse_job, and no line is longer than LINE_LIMIT."""
    try:
        parse_job(doc, "job.yaml")
    except InvalidFineTuneJob as exc:
        lines = str(exc).splitlines()
        assert lines and all(len(line) <= LINE_LIMIT for line in lines), [line[:200] for line in lines]
        return [p.path for p in exc.problems]
    raise AssertionError("accepted")


def assert_refused_at(path: tuple[str | int, ...], value: Any) -> None:
    expected = format_path(("spec", *path))
    paths = problems_of(with_value(path, value))
    assert any(p == expected or p.startswith((expected + ".", expected + "[")) for p in paths), (expected, paths)


def test_the_valid_base_is_valid_for_models_and_crd() -> None:
    parse_job(VALID)
    assert not list(CRD.iter_errors(VALID))


# ---------------------------------------------------------------------------------------------------- overflow


@pytest.mark.parametrize("value", ["1e999B", "1e999", "9e99T", "0B", "0", "0.0M", "1e16", "99999999999999999999T"])
def test_parameter_counts_that_overflow_or_are_zero_are_field_errors(value: str) -> None:
    assert_refused_at(("model", "parameters"), value)


# ---------------------------------------------------------------------------------------------------- names

BAD_NAMES = [
    "Bad_Name",
    "UPPER",
    "with space",
    "-lead",
    "trail-",
    "a..b",
    ".dot",
    "x" * 254,
    "",
    "name\n",
    "na\x00me",
    "ünïcode",
    "a/b",
    "a:b",
]
NAME_FIELDS = [
    ("resources", "serviceAccountName"),
    ("resources", "priorityClassName"),
    ("resources", "cacheClaim"),
    ("queueName",),
    ("model", "credentialsSecret"),
    ("output", "credentialsSecret"),
    ("output", "hub", "credentialsSecret"),
]


@pytest.mark.parametrize("path", NAME_FIELDS, ids=[".".join(p) for p in NAME_FIELDS])
@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_kubernetes_names_are_dns_1123(path: tuple[str, ...], name: str) -> None:
    assert_refused_at(path, name)
    if not name.endswith("\n"):  # (Python's `$` matches before a final newline; the API server's Go regexp does not)
        assert list(CRD.iter_errors(with_value(path, name))), "the CRD pattern accepts it"


def test_queue_name_is_also_a_label_value() -> None:
    assert_refused_at(("queueName",), "q" * 64)  # a valid subdomain, but it becomes the queue-name label
    parse_job(with_value(("queueName",), "q" * 63))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("resources", "gpuResource"), "nvidia.com/"),
        (("resources", "gpuResource"), "Bad_Prefix/gpu"),
        (("resources", "gpuResource"), "a/b/c"),
        (("resources", "gpuResource"), "gpu with space"),
        (("resources", "nodeSelector"), {"bad key!": "v"}),
        (("resources", "nodeSelector"), {"k": "v" * 64}),
        (("resources", "nodeSelector"), {"k": "bad value"}),
        (("resources", "image"), "ghcr.io/x y:1"),
        (("resources", "image"), ""),
        (("output", "hub", "repo"), "org/with space"),
        (("output", "hub", "repo"), "a/b/c"),
        (("model", "adapter"), {"fromJob": "Bad_Job"}),
    ],
)
def test_other_kubernetes_strings(path: tuple[str, ...], value: Any) -> None:
    assert_refused_at(path, value)


# ---------------------------------------------------------------------------------------------------- quantities

BAD_QUANTITIES = [
    "1.2.3",
    "1Gib",
    "1gi",
    "--1",
    "-1Gi",
    "1e999",
    "0",
    "0Gi",
    "Gi",
    "1 Gi",
    "1Gi\n",
    "1.5.Gi",
    "inf",
    "NaN",
    "1K",
    "1e",
    "1e1.5",
    "0x10",
    "",
    "+",
    ".",
    "1E99",
    "99999999999Ei",
]


@pytest.mark.parametrize("field", ["cpu", "memory", "sharedMemory", "cacheSize"])
@pytest.mark.parametrize("value", BAD_QUANTITIES, ids=range(len(BAD_QUANTITIES)))
def test_bad_quantities_are_refused_by_models_and_crd_pattern(field: str, value: str) -> None:
    assert_refused_at(("resources", field), value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        ("16Gi", str(16 * 2**30)),
        ("1.5G", "1.5E+9"),
        ("1e9", "1E+9"),
        ("+1Ki", "1024"),
        (".5", "0.5"),
        ("1.", "1"),
        ("2E", "2E+18"),
        ("100n", "1.00E-7"),
    ],
)
def test_good_quantities_parse_as_kubernetes_does(text: str, value: str) -> None:
    from decimal import Decimal

    assert parse_quantity(text) == Decimal(value) and quantity_problem(text) is None
    parse_job(with_value(("resources", "memory"), text))
    assert not list(CRD.iter_errors(with_value(("resources", "memory"), text)))


# ---------------------------------------------------------------------------------------------------- numbers


def _leaves(node: dict[str, Any], path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], dict]]:
    out = []
    for name, sub in node.get("properties", {}).items():
        p = (*path, name)
        if "properties" in sub:
            out += _leaves(sub, p)
        elif sub.get("type") == "array" and "properties" in sub.get("items", {}):
            out += _leaves(sub["items"], (*p, 0))
        else:
            out.append((p, sub))
    return out


LEAVES = _leaves(SPEC_SCHEMA)
BASE_WITH_LISTS = with_value(("training", "rewardFunctions"), [{"type": "answer"}])
BASE_WITH_LISTS["spec"]["stage"] = "grpo"
BASE_WITH_LISTS["spec"]["training"]["interleaveProbs"] = [1.0]
BASE_WITH_LISTS["spec"]["evalDatasets"] = [{"name": "e", "source": "s3://bkt/e.json"}]
BASE_WITH_LISTS["spec"]["datasetRegistry"] = {"source": "s3://bkt/dataset_info.json", "names": ["x"]}
NUMBERS = [p for p, s in LEAVES if s.get("type") == "number"] + [("training", "interleaveProbs", 0)]
INTEGERS = [p for p, s in LEAVES if s.get("type") == "integer" and "enum" not in s]
BOOLEANS = [p for p, s in LEAVES if s.get("type") == "boolean"]


def _ids(paths: list[tuple]) -> list[str]:
    return [format_path(p) for p in paths]


def _refused_everywhere(path: tuple[str | int, ...], value: Any) -> None:
    """Refused by the models with the field's path, and by the CRD schema (when JSON can carry the value)."""
    doc = with_value(path, value, BASE_WITH_LISTS)
    expected = format_path(("spec", *path))
    paths = problems_of(doc)
    assert any(p == expected or p.startswith(expected) for p in paths), (expected, paths)
    if not (isinstance(value, float) and not math.isfinite(value)):
        assert list(CRD.iter_errors(doc)), f"the CRD accepts {value!r} at {expected}"


def test_every_float_integer_and_boolean_field_is_covered() -> None:
    assert {"weightDecay", "maxGradNorm", "beta", "klCoef", "temperature", "weight"} <= {p[-1] for p in NUMBERS}
    assert {"ttlSecondsAfterFinished", "backoffLimit", "activeDeadlineSeconds", "seed"} <= {p[-1] for p in INTEGERS}
    assert len(BOOLEANS) >= 10


@pytest.mark.parametrize("path", NUMBERS, ids=_ids(NUMBERS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "0.5", "nan", True, [0.5]], ids=str)
def test_every_float_refuses_nan_inf_strings_and_booleans(path: tuple, value: Any) -> None:
    _refused_everywhere(path, value)


@pytest.mark.parametrize("path", INTEGERS, ids=_ids(INTEGERS))
@pytest.mark.parametrize("value", ["16", "1", True, 1.5, math.nan, 2**64, -(2**64)], ids=str)
def test_every_integer_is_as_strict_as_the_crd_and_fits_64_bits(path: tuple, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0 and "minimum" not in dict(LEAVES)[path]:
        pytest.skip("no lower bound in the CRD")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0 and "maximum" not in dict(LEAVES)[path]:
        problems_of(with_value(path, value, BASE_WITH_LISTS))  # the CRD has no maximum; the models refuse it
        return
    _refused_everywhere(path, value)


@pytest.mark.parametrize("path", BOOLEANS, ids=_ids(BOOLEANS))
@pytest.mark.parametrize("value", ["yes", "true", "True", 1, 0, "on", None], ids=str)
def test_every_boolean_is_as_strict_as_the_crd(path: tuple, value: Any) -> None:
    if value is None and path[-1] == "packing":
        pytest.skip("training.packing is nullable: null means the stage's default")
    _refused_everywhere(path, value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("training", "seed"), 2**32),
        (("runPolicy", "ttlSecondsAfterFinished"), 2**31),
        (("runPolicy", "activeDeadlineSeconds"), 2**63),
        (("runPolicy", "backoffLimit"), 2**31),
        (("checkpointing", "everySteps"), 2**63),
        (("method", "lora", "alpha"), 10**30),
        (("datasets", 0, "numSamples"), 10**11),
        (("datasets", 0, "numSamples"), 1e11),
    ],
)
def test_int32_int64_and_sample_bounds(path: tuple, value: Any) -> None:
    assert_refused_at(path, value)


def test_whole_floats_are_integers_as_the_api_server_reads_them() -> None:
    job = parse_job(with_value(("method", "lora", "rank"), 16.0))
    assert job.spec.method.lora.rank == 16 and isinstance(job.spec.method.lora.rank, int)


def test_ports_are_bounded_in_the_pod_contract() -> None:
    job = parse_job(VALID)
    for port in (70000, -1, "9400"):
        with pytest.raises(ValueError):
            TrainerConfig.from_job(job, output_uri="s3://bkt/o", cache_dir="/c", scratch_dir="/s", metrics_port=port)


# ---------------------------------------------------------------------------------------------------- URIs, templates, text

BAD_URIS = [
    ("datasets", 0, "source", "s3:///key"),
    ("datasets", 0, "source", "s3://B/key"),
    ("datasets", 0, "source", "s3://ab/key"),
    ("datasets", 0, "source", "s3://a_b/key"),
    ("datasets", 0, "source", "s3://a..b/key"),
    ("datasets", 0, "source", "s3://-abc/key"),
    ("datasets", 0, "source", "s3://192.168.1.1/key"),
    ("datasets", 0, "source", "s3://" + "a" * 64 + "/k"),
    ("output", "uri", "s3://Bucket/out"),
    ("model", "adapter", "source", "s3://x/adapter"),
    ("model", "source", "hf://a/b/c"),
    ("model", "source", "hf://org--x/m"),
    ("model", "source", "hf://.org/m"),
    ("model", "source", "hf://org/m.git"),
    ("model", "source", "hf://org/a..b"),
    ("model", "source", "hf://" + "a" * 97),
    ("model", "source", "hf://org/ m"),
    ("model", "source", "hf://org/modèle"),
    ("model", "source", "ms://a/b/c"),
    ("datasets", 0, "source", "hf://org/-data"),
    ("datasets", 0, "source", "configmap://Bad_Name/key"),
    ("datasets", 0, "source", "configmap://cm/a/b"),
    ("datasets", 0, "source", "configmap://cm/"),
    ("datasets", 0, "source", "configmap://cm/.."),
    ("datasets", 0, "source", "pvc://Bad_Claim/data.json"),
    ("datasets", 0, "source", "pvc://claim/../etc/passwd"),
    ("datasets", 0, "source", "s3://bkt/key\x00"),
]


@pytest.mark.parametrize("case", BAD_URIS, ids=[c[-1][:30] for c in BAD_URIS])
def test_uris_the_fetching_client_would_refuse(case: tuple) -> None:
    assert_refused_at(case[:-1], case[-1])


@pytest.mark.parametrize("name", ["llama9", "", "ChatML", "tokenizer ", "x" * 10_000])
def test_unknown_templates_are_refused(name: str) -> None:
    assert_refused_at(("model", "template"), name)


def test_known_templates_are_the_trainers() -> None:
    from kubetune.trainer.data import templates

    assert set(TEMPLATE_NAMES) == {"tokenizer", *templates.TEMPLATES, *getattr(templates, "VENDOR_TEMPLATES", {})}
    for name in TEMPLATE_NAMES:
        parse_job(with_value(("model", "template"), name))


@pytest.mark.parametrize(
    "name", ["a\x00b", "a\nb", "a\rb", "a\tb", "\x7f", "a\u202eb", "a\u200bb", "\x1b[31mred", "a\u0085b", "a\ud800b"]
)
def test_control_characters_in_dataset_names_and_other_strings(name: str) -> None:
    assert_refused_at(("datasets", 0, "name"), name)
    assert_refused_at(("datasets", 0, "split"), name)
    assert_refused_at(("model", "revision"), name)


def test_a_regex_reward_pattern_may_hold_newlines() -> None:
    doc = with_value(("training", "rewardFunctions"), [{"type": "regex", "pattern": "^a\nb$"}])
    doc["spec"]["stage"] = "grpo"
    parse_job(doc)


# ---------------------------------------------------------------------------------------------------- echo bounds

HUGE = "x" * 1_000_000


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("datasets", 0, "name"), HUGE),
        (("datasets", 0, "source"), "s3://bkt/" + HUGE),
        (("datasets", 0, "source"), HUGE),
        (("model", "template"), HUGE),
        (("stage",), HUGE),
        (("resources", "memory"), HUGE),
        (("queueName",), HUGE),
        (("training", "epochs"), HUGE),
        (("method", "type"), HUGE),
        (("model", "parameters"), "9" * 100_000 + "B"),
        ((HUGE,), 1),
        (("training", "reportTo"), [HUGE]),
        (("resources", "nodeSelector"), {HUGE: HUGE}),
    ],
)
def test_a_huge_value_is_never_echoed_in_full(path: tuple, value: Any) -> None:
    problems_of(with_value(path, value))  # asserts every line is at most LINE_LIMIT characters


def test_huge_api_version_and_kind_are_clipped() -> None:
    doc = copy.deepcopy(VALID)
    doc["apiVersion"], doc["kind"] = HUGE, HUGE
    problems_of(doc)


# ---------------------------------------------------------------------------------------------------- hypothesis

WEIRD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(max_size=20),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=10),
    st.sampled_from(["1e999B", "1.2.3", "Bad_Name", "s3:///k", "hf://a/b/c", "yes", "16", "NaN", "-1", HUGE[:5000]]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
PATHS = [p for p, _ in LEAVES]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=WEIRD)
def test_any_value_anywhere_validates_or_is_a_field_error(path: tuple, value: Any) -> None:
    doc = with_value(path, value, BASE_WITH_LISTS)
    try:
        parse_job(doc)
    except InvalidFineTuneJob as exc:
        assert all(len(line) <= LINE_LIMIT for line in str(exc).splitlines())
    # nothing else may escape: OverflowError, RecursionError, TypeError ... would fail this test


# ---------------------------------------------------------------------------------------------------- size


def test_a_spec_whose_trainer_json_would_not_fit_a_configmap_is_refused() -> None:
    datasets = [{"name": f"d{i}", "source": f"s3://bkt/{'k' * 200}/{i}.json"} for i in range(4000)]
    paths = problems_of(with_value(("datasets",), datasets))
    assert paths == ["spec"]
    with pytest.raises(InvalidFineTuneJob, match="ConfigMap"):
        parse_job(with_value(("datasets",), datasets))


def test_configmap_size_check_is_a_pure_function_over_the_rendered_object() -> None:
    from kubetune.operator.manifests import BuildOptions, build_all

    (cm, *_rest) = build_all(parse_job(VALID), BuildOptions())
    assert configmap_size_problem(cm["data"]) is None
    assert "1,048,576" in (configmap_size_problem({"trainer.json": "x" * MAX_CONFIGMAP_BYTES}) or "")


# ---------------------------------------------------------------------------------------------------- YAML

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (BOMB, "alias"),
        ("spec: " + "[" * 100_000 + "]" * 100_000, "nested deeper"),
        ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 80)), "nested deeper"),
        ("a: &a [*a]\n", "recursive"),
        ("kind: FineTuneJob\nkind: Secret\n", "duplicate key"),
        ("spec:\n  a: 1\n  b: 2\n  a: 3\n", "duplicate key"),
        (b"\x00\x01\x02\xff binary", "binary"),
        ("name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("a: [unclosed", "not valid YAML"),
        ("a:\n\t- tab", "not valid YAML"),
        ("x: " + "y" * (MAX_BYTES + 1), "larger than"),
    ],
)
def test_the_yaml_loader_refuses_with_one_short_line(text: str | bytes, words: str) -> None:
    with pytest.raises(YamlRefused) as info:
        load_documents(text)
    message = str(info.value)
    assert words in message and "\n" not in message and len(message) <= 200, message


def test_dates_stay_strings_as_kubernetes_reads_them() -> None:
    assert load_documents("name: 2024-01-01\n") == [{"name": "2024-01-01"}]


def test_a_file_over_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_bytes(b"a: " + b"x" * (MAX_BYTES + 10))
    with pytest.raises(YamlRefused, match="larger than"):
        read_documents(f)


def _docs(*docs: Any) -> str:
    return "---\n".join(yaml.safe_dump(d) for d in docs)


def test_every_bad_document_is_reported_and_named(tmp_path: Path) -> None:
    misspelt = copy.deepcopy(VALID)
    misspelt["kind"], misspelt["metadata"]["name"] = "FinetuneJob", "typo"
    bad_epochs = with_value(("training", "epochs"), "many")
    bad_epochs["metadata"]["name"] = "bad-epochs"
    dup = copy.deepcopy(VALID)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"k": "v"}}
    no_kind = {"apiVersion": "kubetune.io/v1alpha1", "metadata": {"name": "nokind"}, "spec": {}}
    f = tmp_path / "jobs.yaml"
    f.write_text(_docs(VALID, misspelt, secret, bad_epochs, [VALID], dup, "a scalar", no_kind))
    jobs, problems = jobs_from_documents(read_documents(f))
    assert [j.metadata.name for j in jobs] == ["valid-job"]
    lines = [str(p) for p in problems]
    assert any(line.startswith("document 2 (FinetuneJob/typo): kind: must be FineTuneJob") for line in lines), lines
    assert any(line.startswith("document 4 (FineTuneJob/bad-epochs): spec.training.epochs:") for line in lines), lines
    assert any(line.startswith("document 5: document 5 is a list") for line in lines), lines
    assert any(
        line.startswith("document 6 (FineTuneJob/valid-job): metadata.name:") and "twice" in line for line in lines
    ), lines
    assert any(line.startswith("document 7: document 7 is a string") for line in lines), lines
    assert any(line.startswith("document 8 (?/nokind): kind:") for line in lines), lines
    assert not any("document 3" in line for line in lines)  # the Secret beside the jobs is not ours to judge
    with pytest.raises(InvalidFineTuneJob) as info:
        load_jobs(f)
    assert len(str(info.value).splitlines()) == len(problems) and str(info.value).startswith(f"{f}: document 2")


@pytest.mark.parametrize(
    "kind",
    [
        "FinetuneJob",
        "FineTuneJobs",
        "finetunejob",
        "FineTunejob",
        "FineTune",
        "Finetunejob",
        "ftj",
        "FineTuningJob",
        None,
        "",
        7,
    ],
)
def test_a_misspelt_or_missing_kind_is_an_error_not_a_skip(kind: Any, tmp_path: Path) -> None:
    doc = copy.deepcopy(VALID)
    doc["kind"] = kind
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidFineTuneJob, match="kind"):
        load_jobs(f)


def test_a_kubernetes_list_is_read_item_by_item(tmp_path: Path) -> None:
    other = copy.deepcopy(VALID)
    other["metadata"]["name"] = "other"
    f = tmp_path / "list.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [VALID, other]}))
    assert [j.metadata.name for j in load_jobs(f)] == ["valid-job", "other"]


def test_duplicate_names_in_other_namespaces_are_fine(tmp_path: Path) -> None:
    other = copy.deepcopy(VALID)
    other["metadata"]["namespace"] = "team-b"
    f = tmp_path / "jobs.yaml"
    f.write_text(_docs(VALID, other))
    assert len(load_jobs(f)) == 2


# ---------------------------------------------------------------------------------------------------- configmap://


def test_the_trainer_resolves_configmap_sources_at_the_path_the_job_mounts(tmp_path: Path, monkeypatch) -> None:
    from kubetune.operator.manifests import BuildOptions, build_all
    from kubetune.trainer.storage.fetch import fetch

    doc = with_value(("datasets", 0, "source"), "configmap://prefs-data/train.jsonl")
    *_, job = build_all(parse_job(doc), BuildOptions())
    pod = job["spec"]["template"]["spec"]
    volume = next(v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == "prefs-data")
    mount = next(m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume)
    assert mount.startswith(CONFIGMAP_ROOT + "/")
    # the pod's filesystem, under tmp_path: the ConfigMap's keys appear as files in the rendered mount path
    in_pod = tmp_path / mount.lstrip("/")
    in_pod.mkdir(parents=True)
    (in_pod / "train.jsonl").write_text('{"instruction": "hi", "output": "yo"}\n')
    monkeypatch.setattr(trainer_config, "CONFIGMAP_ROOT", str(tmp_path) + CONFIGMAP_ROOT)
    got = fetch(
        "configmap://prefs-data/train.jsonl",
        field="spec.datasets[0].source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "cache",
    )
    assert got.resolve() == (in_pod / "train.jsonl").resolve()
