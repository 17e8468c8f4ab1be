"""Pure helpers of the FineTuneJob handlers."""

from __future__ import annotations

from kubetune.operator.handlers.finetunejob import essentials, first_or_none, upstream_names


def test_essentials_keep_what_decisions_read_and_drop_managed_fields() -> None:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "a", "uid": "u", "annotations": {"x": "1"}, "managedFields": [{"manager": "kubectl"}]},
        "spec": {"suspend": False},
        "status": {"active": 1},
    }
    assert essentials(body) == {
        "metadata": {"name": "a", "uid": "u", "annotations": {"x": "1"}},
        "spec": {"suspend": False},
        "status": {"active": 1},
    }
    assert essentials({"metadata": {"name": "b"}}) == {"metadata": {"name": "b"}, "spec": {}, "status": {}}


def test_upstream_names_and_first() -> None:
    spec = {"model": {"adapter": {"fromJob": "sft"}}, "training": {"rewardModel": {"fromJob": "rm"}}}
    assert upstream_names(spec) == ["sft", "rm"]
    assert upstream_names({"model": {"adapter": {"source": "s3://x"}}}) == []
    assert first_or_none(None) is None and first_or_none([]) is None and first_or_none(iter([3, 4])) == 3


def test_upstream_names_of_a_spec_of_any_shape() -> None:
    for spec in (
        "a string",
        None,
        5,
        [1],
        {"model": 5},
        {"model": {"adapter": "x"}},
        {"training": {"rewardModel": [1]}},
    ):
        assert upstream_names(spec) == []


def test_gpu_type_of_a_body_of_any_shape() -> None:
    from kubetune.operator.handlers.finetunejob import gpu_type

    assert gpu_type({"spec": {"resources": {"gpuType": "H100-80GB"}}}) == "H100-80GB"
    for body in ({}, {"spec": "x"}, {"spec": {"resources": 5}}, {"spec": {"resources": {"gpuType": 3}}}):
        assert gpu_type(body) is None
