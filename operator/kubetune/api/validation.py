"""Turn a FineTuneJob document into a typed object, or into one readable line per problem.

Paths are written as the user wrote them: camelCase names and list indexes, e.g.
``spec.datasets[0].formatting``. Unknown fields get a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api.v1alpha1 import API_VERSION, KIND, FineTuneJob, SpecProblems


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidFineTuneJob(ValueError):
    def __init__(self, problems: list[Problem], source: str = ""):
        self.problems = problems
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + str(p) for p in problems))


def format_path(loc: tuple[str | int, ...] | list[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _unwrap(annotation: Any) -> Any:
    """list[X] / X | None / dict[str, X] → X, until a model class or a plain type is left."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        elif origin in (list, dict, tuple):
            annotation = typing.get_args(annotation)[-1]
        else:
            return annotation


def _model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next(
            (f for n, f in model.model_fields.items() if (f.alias or n) == part or n == part),
            None,
        )
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _message(err: dict[str, Any], root: type[BaseModel]) -> list[Problem]:
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), SpecProblems):
        return [Problem(format_path(loc + tuple(p)), m) for p, m in ctx["error"].problems]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        parent = _model_at(root, loc[:-1])
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(name, _field_names(parent), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(_field_names(parent))}"
        return [Problem(format_path(loc), f"unknown field{hint}")]
    simple = {
        "missing": "required field is missing",
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "too_short": "must have at least {min_length} item(s)",
        "string_too_short": "must have at least {min_length} character(s)",
        "string_too_long": "must have at most {max_length} characters",
        "string_pattern_mismatch": "{input!r} does not match {pattern}",
    }
    if kind in simple:
        return [Problem(format_path(loc), simple[kind].format(input=err.get("input"), **ctx))]
    if kind in ("enum", "literal_error"):
        return [Problem(format_path(loc), f"{err.get('input')!r} is not allowed; expected {ctx.get('expected')}")]
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return [Problem(format_path(loc), msg)]


def problems_from(exc: ValidationError, root: type[BaseModel] = FineTuneJob, prefix: tuple[str, ...] = ()) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        err = dict(err)
        err["loc"] = prefix + tuple(err["loc"])
        problems += _message(err, root)
    return problems


def parse_job(doc: Any, source: str = "") -> FineTuneJob:
    """Validate one FineTuneJob document; raise :class:`InvalidFineTuneJob` with every problem."""
    if not isinstance(doc, dict):
        raise InvalidFineTuneJob([Problem("", "a FineTuneJob must be a YAML mapping")], source)
    problems: list[Problem] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}, not {doc.get('apiVersion')!r}"))
    if doc.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}, not {doc.get('kind')!r}"))
    if problems:
        raise InvalidFineTuneJob(problems, source)
    try:
        return FineTuneJob.model_validate(doc)
    except ValidationError as exc:
        raise InvalidFineTuneJob(problems_from(exc), source) from None


def load_documents(path: str | Path) -> list[Any]:
    text = Path(path).read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d is not None]


def load_jobs(path: str | Path) -> list[FineTuneJob]:
    """All FineTuneJobs of a YAML file (other kinds are skipped); raise on the first invalid one."""
    try:
        docs = load_documents(path)
    except yaml.YAMLError as exc:
        raise InvalidFineTuneJob([Problem("", f"not valid YAML: {exc}")], str(path)) from None
    except OSError as exc:
        raise InvalidFineTuneJob([Problem("", f"cannot read: {exc.strerror}")], str(path)) from None
    jobs = [parse_job(d, str(path)) for d in docs if isinstance(d, dict) and d.get("kind", KIND) == KIND]
    if not jobs:
        raise InvalidFineTuneJob([Problem("", "no FineTuneJob found in the file")], str(path))
    return jobs
