"""The gate over two models' scores: pure, so every condition is tested without a model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.conditions import EVALUATION_LINE


@dataclass
class Scores:
    """One model's evaluation; None where nothing measured it."""

    eval_loss: float | None = None
    perplexity: float | None = None
    rule_score: float | None = None
    reward: float | None = None
    prompts: int | None = None
    rules: dict[str, float] = field(default_factory=dict)  # per rule (type_index): mean over the prompts

    def to_status(self) -> dict[str, Any]:
        out = {
            "evalLoss": self.eval_loss,
            "perplexity": self.perplexity,
            "ruleScore": self.rule_score,
            "reward": self.reward,
            "prompts": self.prompts,
        }
        return {k: (v if k == "prompts" else _finite(v)) for k, v in out.items() if v is not None}


@dataclass
class Check:
    name: str  # the spec.evaluation.gate field
    value: float | None
    threshold: float
    passed: bool

    def line(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} {shown} ({'ok' if self.passed else 'needs'} {_RULE[self.name]} {self.threshold:.4g})"


_RULE = {
    "evalLossImprovementPercent": ">=",
    "maxEvalLoss": "<=",
    "minRuleScore": ">=",
    "ruleScoreGain": ">=",
    "minReward": ">=",
    "rewardGain": ">=",
}


@dataclass
class EvaluationResult:
    base: Scores
    trained: Scores
    checks: list[Check]
    answers: list[dict[str, Any]] = field(default_factory=list)  # a sample of prompts and both models' answers

    @property
    def promoted(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_status(self) -> dict[str, Any]:
        """``status.evaluation`` (camelCase, finite numbers only)."""
        return {
            "promoted": self.promoted,
            "base": self.base.to_status(),
            "trained": self.trained.to_status(),
            "checks": [
                {"name": c.name, "value": _finite(c.value), "threshold": c.threshold, "passed": c.passed}
                for c in self.checks
            ],
        }

    def to_manifest(self) -> dict[str, Any]:
        return {
            **self.to_status(),
            "rules": {"base": self.base.rules, "trained": self.trained.rules},
            "answers": self.answers,
        }

    def summary(self) -> str:
        """One line a person reads: the verdict and every condition."""
        verdict = "passed" if self.promoted else "failed"
        conditions = "; ".join(c.line() for c in self.checks) or "no gate conditions"
        return f"evaluation gate {verdict}: {conditions}"

    def termination_lines(self) -> str:
        """The summary, then the status as one JSON line (kept well under the 4,096-byte termination message)."""
        return f"{self.summary()}\n{EVALUATION_LINE}{json.dumps(self.to_status(), separators=(',', ':'))}"


def _finite(value: float | None) -> float | None:
    """JSON and the API server take no NaN/Inf: a diverged loss is reported as absent."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def _check(name: str, value: float | None, threshold: float | None, ok: Any) -> list[Check]:
    if threshold is None:
        return []
    passed = value is not None and math.isfinite(value) and bool(ok(value, threshold))
    return [Check(name, value, float(threshold), passed)]


def _gain(trained: float | None, base: float | None) -> float | None:
    return None if trained is None or base is None else trained - base


def loss_improvement_percent(base: float | None, trained: float | None) -> float | None:
    """How many percent the trained loss is below the base loss (negative: worse); None when not comparable."""
    if base is None or trained is None or not math.isfinite(base) or not math.isfinite(trained) or base <= 0:
        return None
    return 100.0 * (base - trained) / base


def decide(gate: Any, base: Scores, trained: Scores) -> list[Check]:
    """Every condition set in ``spec.evaluation.gate``, measured; a value that could not be measured fails."""
    ge = lambda v, t: v >= t
    return [
        *_check(
            "evalLossImprovementPercent",
            loss_improvement_percent(base.eval_loss, trained.eval_loss),
            gate.eval_loss_improvement_percent,
            ge,
        ),
        *_check("maxEvalLoss", trained.eval_loss, gate.max_eval_loss, lambda v, t: v <= t),
        *_check("minRuleScore", trained.rule_score, gate.min_rule_score, ge),
        *_check("ruleScoreGain", _gain(trained.rule_score, base.rule_score), gate.rule_score_gain, ge),
        *_check("minReward", trained.reward, gate.min_reward, ge),
        *_check("rewardGain", _gain(trained.reward, base.reward), gate.reward_gain, ge),
    ]
