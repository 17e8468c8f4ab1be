"""The report step: what happened to every row (read, valid, dropped: reason → count and first row indexes),
logged per dataset; a dataset left with no valid row fails the run here, naming it and its reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.trainer.data.schema import clip
from kubetune.trainer.errors import DataError
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

FIRST_ROWS = 10
EXAMPLE_CHARS = 200  # a reason's example detail is cut: a huge cell is never echoed in full


@dataclass
class ReasonStats:
    count: int = 0
    rows: list[int] = field(default_factory=list)
    example: str = ""


@dataclass
class DatasetReport:
    name: str
    source: str = ""
    rows: int = 0
    valid: int = 0
    dropped: int = 0
    truncated: int = 0
    warnings: dict[str, ReasonStats] = field(default_factory=dict)
    reasons: dict[str, ReasonStats] = field(default_factory=dict)
    token_lengths: list[int] = field(default_factory=list, repr=False)
    packing: dict[str, Any] | None = None

    def drop(self, row: int, reason: str, detail: str = "") -> None:
        self.dropped += 1
        self._note(self.reasons, row, reason, detail)

    def warn(self, row: int, reason: str, detail: str = "") -> None:
        self._note(self.warnings, row, reason, detail)

    @staticmethod
    def _note(table: dict[str, ReasonStats], row: int, reason: str, detail: str) -> None:
        stats = table.setdefault(clip(reason, 80), ReasonStats(example=clip(detail, EXAMPLE_CHARS)))
        stats.count += 1
        if len(stats.rows) < FIRST_ROWS:
            stats.rows.append(row)

    def percentiles(self) -> dict[str, int]:
        if not self.token_lengths:
            return {}
        ordered = sorted(self.token_lengths)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "rows": self.rows,
            "valid": self.valid,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "truncatedPercent": round(100.0 * self.truncated / self.valid, 2) if self.valid else 0.0,
            "tokenLengths": self.percentiles(),
            "packing": self.packing,
            "reasons": {k: {"count": v.count, "rows": v.rows, "example": v.example} for k, v in self.reasons.items()},
            "warnings": {
                k: {"count": v.count, "rows": v.rows, "example": v.example} for k, v in self.warnings.items()
            },
        }

    def state(self) -> dict[str, Any]:
        """Everything, for the tokenized-data cache."""
        return {**self.to_dict(), "tokenLengthsAll": self.token_lengths}

    @classmethod
    def from_state(cls, doc: dict[str, Any]) -> DatasetReport:
        def stats(table: dict[str, Any]) -> dict[str, ReasonStats]:
            return {k: ReasonStats(v["count"], list(v["rows"]), v.get("example", "")) for k, v in table.items()}

        return cls(
            name=doc["name"],
            source=doc.get("source", ""),
            rows=doc["rows"],
            valid=doc["valid"],
            dropped=doc["dropped"],
            truncated=doc["truncated"],
            warnings=stats(doc["warnings"]),
            reasons=stats(doc["reasons"]),
            token_lengths=list(doc["tokenLengthsAll"]),
            packing=doc.get("packing"),
        )

    def lines(self) -> list[str]:
        out = [
            f"dataset {self.name}: {self.rows} rows read, {self.valid} valid, {self.dropped} dropped"
            + (f", {self.truncated} truncated" if self.truncated else "")
        ]
        if self.token_lengths:
            p = self.percentiles()
            out.append(
                f"  tokens per row: p50 {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, max {p['max']}"
                + (f"; {100.0 * self.truncated / self.valid:.1f}% truncated" if self.valid else "")
            )
        if self.packing:
            out.append(
                f"  packing: {self.packing['rowsIn']} rows → {self.packing['rowsOut']} rows, "
                f"{100 * self.packing['efficiency']:.1f}% of the blocks filled"
            )
        for reason, stats in self.reasons.items():
            rows = ", ".join(map(str, stats.rows)) + (", …" if stats.count > len(stats.rows) else "")
            out.append(
                f"  dropped {stats.count} × {reason} (rows {rows}){': ' + stats.example if stats.example else ''}"
            )
        for reason, stats in self.warnings.items():
            rows = ", ".join(map(str, stats.rows)) + (", …" if stats.count > len(stats.rows) else "")
            out.append(f"  warning {stats.count} × {reason} (rows {rows})")
        return out


def log_reports(reports: list[DatasetReport]) -> None:
    for r in reports:
        for line in r.lines():
            log.info(line)


def check_reports(reports: list[DatasetReport]) -> None:
    empty = [r for r in reports if r.valid == 0]
    if empty:
        details = "\n".join(line for r in empty for line in r.lines())
        names = ", ".join(r.name for r in empty)
        raise DataError(f"no valid rows in dataset(s) {names}; fix the rows or the columns/tags mapping:\n{details}")
