"""Turn a FineTuneJob document into a typed object, or into one readable line per problem.

Paths are written as the user wrote them: camelCase names and list indexes, e.g.
``spec.datasets[0].formatting``. Unknown fields get a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kubetune.api.checks import clip, clip_text
from kubetune.api.redact import redact
from kubetune.api.trainer_config import rendered_size_problem
from kubetune.api.v1alpha1 import API_VERSION, GROUP, KIND, FineTuneJob, SpecProblems
from kubetune.api.yamlload import YamlRefused, read_documents


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    document: str = ""  # "document 2 (FineTuneJob/name)" in a file of several documents

    def __str__(self) -> str:
        where = f"{self.document}: " if self.document else ""
        return redact(where + (f"{self.path}: {self.message}" if self.path else self.message))  # no URL credential


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


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _type_message(kind: str, value: Any) -> str:
    """'must be an integer, not the string "16" (write it without quotes)': what was given, never all of it."""
    want = _TYPE_WORDS[kind]
    if isinstance(value, str):
        hint = " (write it without quotes)" if want in ("an integer", "a number", "a whole number") else ""
        hint = " (write true or false, without quotes)" if want == "true or false" else hint
        return f"must be {want}, not the string {clip(value)}{hint}"
    if isinstance(value, bool):
        return f"must be {want}, not the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"must be {want}, not {clip(value)}"
    if isinstance(value, (list, tuple)):
        return f"must be {want}, not a list"
    if isinstance(value, dict):
        return f"must be {want}, not a mapping"
    return f"must be {want}"


def _message(err: dict[str, Any], root: type[BaseModel]) -> list[Problem]:
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), SpecProblems):
        return [Problem(format_path(loc + tuple(p)), clip_text(m)) for p, m in ctx["error"].problems]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        parent = _model_at(root, loc[:-1])
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(name, _field_names(parent), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(_field_names(parent))}"
        return [Problem(clip_text(format_path(loc), 120), f"unknown field{hint}")]
    if kind in _TYPE_WORDS:
        return [Problem(format_path(loc), _type_message(kind, err.get("input")))]
    simple = {
        "missing": "required field is missing",
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "finite_number": "must be a finite number, not NaN or Infinity",
        "too_short": "must have at least {min_length} item(s)",
        "too_long": "must have at most {max_length} item(s)",
        "string_too_short": "must have at least {min_length} character(s)",
        "string_too_long": "must have at most {max_length} characters",
        "string_pattern_mismatch": "{input} does not match {pattern}",
    }
    if kind in simple:
        fields = {k: v for k, v in ctx.items() if k != "input"}
        return [Problem(format_path(loc), clip_text(simple[kind].format(input=clip(err.get("input")), **fields)))]
    if kind in ("enum", "literal_error"):
        return [Problem(format_path(loc), f"{clip(err.get('input'))} is not allowed; expected {ctx.get('expected')}")]
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    return [Problem(format_path(loc), clip_text(msg))]


def problems_from(
    exc: ValidationError, root: type[BaseModel] = FineTuneJob, prefix: tuple[str, ...] = ()
) -> list[Problem]:
    problems: list[Problem] = []
    for details in exc.errors(include_url=False):
        err: dict[str, Any] = dict(details)
        err["loc"] = prefix + tuple(details["loc"])
        problems += _message(err, root)
    return problems


def parse_job(doc: Any, source: str = "") -> FineTuneJob:
    """Validate one FineTuneJob document; raise :class:`InvalidFineTuneJob` with every problem, and nothing else
    whatever the document holds (the operator turns it into Validated=False, never a retry)."""
    if not isinstance(doc, dict):
        raise InvalidFineTuneJob([Problem("", f"a FineTuneJob must be a YAML mapping, not {_what(doc)}")], source)
    problems: list[Problem] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}, not {clip(doc.get('apiVersion'))}"))
    if doc.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}, not {clip(doc.get('kind'))}"))
    if problems:
        raise InvalidFineTuneJob(problems, source)
    try:
        job = FineTuneJob.model_validate(doc)
    except ValidationError as exc:
        raise InvalidFineTuneJob(problems_from(exc), source) from None
    except RecursionError:
        raise InvalidFineTuneJob([Problem("", "nested too deeply to validate")], source) from None
    except Exception as exc:  # noqa: BLE001 - an unforeseen value must end as a problem, not a crash or a retry loop
        raise InvalidFineTuneJob(
            [Problem("", f"cannot be validated ({type(exc).__name__}: {clip_text(str(exc), 120)})")], source
        ) from None
    size = rendered_size_problem(job)
    if size:
        raise InvalidFineTuneJob([Problem("spec", size)], source)
    return job


def _what(doc: Any) -> str:
    return {
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "empty",
    }.get(type(doc), type(doc).__name__)


def load_documents(path: str | Path) -> list[Any]:
    """The documents of a YAML file through the one bounded loader (:mod:`kubetune.api.yamlload`)."""
    return read_documents(path)


def _meant_as_finetunejob(doc: dict[str, Any]) -> bool:
    """A document of our API group, without a kind, or with a kind close to FineTuneJob is validated as one (so a
    misspelt kind is an error, not a skip); other Kubernetes objects (a Secret beside the job) are left alone."""
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if isinstance(api, str) and api.split("/", 1)[0] == GROUP:
        return True
    if not isinstance(kind, str) or not kind:
        return True
    folded = kind.replace("-", "").replace("_", "").lower()
    return (
        "finetune" in folded
        or folded in ("ftj", "ftjs")
        or difflib.SequenceMatcher(None, folded, KIND.lower()).ratio() >= 0.75
    )


def _entries(docs: list[Any]) -> Iterator[tuple[str, Any]]:
    """(label, document) pairs; the items of a ``kind: List`` are documents of their own."""
    many = len(docs) > 1
    for i, doc in enumerate(docs, start=1):
        label = f"document {i}" if many else ""
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            for j, item in enumerate(doc["items"]):
                yield (f"{label} " if label else "") + f"items[{j}]", item
        else:
            yield label, doc


def _named(label: str, doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    kind = doc.get("kind")
    what = f"{kind if isinstance(kind, str) else '?'}/{name if isinstance(name, str) else '?'}"
    return f"{label} ({clip_text(what, 80)})" if label else ""


def jobs_from_documents(docs: list[Any]) -> tuple[list[FineTuneJob], list[Problem]]:
    """Every FineTuneJob of a file's documents, and every problem of every document (each named by its index and
    kind/name when the file has several). Lists and scalars are problems; other kinds of objects are skipped."""
    jobs: list[FineTuneJob] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], str] = {}
    for label, doc in _entries(docs):
        if not isinstance(doc, dict):
            where = label or "the document"
            problems.append(
                Problem(
                    "",
                    f"{where} is {_what(doc)}, not a Kubernetes object; write one object per "
                    "document (separated by ---) or a kind: List",
                    label,
                )
            )
            continue
        if not _meant_as_finetunejob(doc):
            continue
        named = _named(label, doc)
        try:
            job = parse_job(doc)
        except InvalidFineTuneJob as exc:
            problems += [replace(p, document=named) for p in exc.problems]
            continue
        key = (job.metadata.namespace or "", job.metadata.name)
        if key in seen:
            problems.append(
                Problem(
                    "metadata.name",
                    f"FineTuneJob {job.metadata.name!r} is defined twice (also "
                    f"{seen[key] or 'above'}); give each job its own name",
                    named,
                )
            )
            continue
        seen[key] = named
        jobs.append(job)
    return jobs, problems


def read_jobs(path: str | Path) -> tuple[list[FineTuneJob], list[Problem]]:
    """The FineTuneJobs of a file and every problem found (never an exception for what the file holds)."""
    try:
        docs = read_documents(path)
    except YamlRefused as exc:
        return [], [Problem("", str(exc))]
    except OSError as exc:
        return [], [Problem("", f"cannot read: {exc.strerror or exc}")]
    return jobs_from_documents(docs)


def load_jobs(path: str | Path) -> list[FineTuneJob]:
    """All FineTuneJobs of a YAML file (other kinds of objects are skipped); raise with every problem of every
    document, or when the file holds no FineTuneJob."""
    jobs, problems = read_jobs(path)
    if problems:
        raise InvalidFineTuneJob(problems, str(path))
    if not jobs:
        raise InvalidFineTuneJob([Problem("", "no FineTuneJob found in the file")], str(path))
    return jobs
