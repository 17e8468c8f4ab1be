"""Value checks that make validation agree with the API server and with the pod, written once.

- :data:`Int`, :data:`Float`: the CRD's ``integer`` and ``number`` as the API server reads JSON: no strings
  (``"16"``), no booleans, a whole float (``8.0``) is an integer, integers fit in 64 bits, numbers are finite
  (NaN and Infinity are refused in every float field). Booleans are strict through the models' config.
- :func:`quantity_problem`: Kubernetes ``resource.Quantity`` grammar (``1.2.3`` refused), positive and within
  what the API server can store.
- :func:`uri_shape_problem`: the part after the scheme, as the client that fetches it will read it (S3 bucket
  names, Hugging Face / ModelScope repository ids, ConfigMap and PVC names).
- :func:`text_problem`: control characters in names and other short strings.
- :func:`clip`: a value shown in a message is cut, so a 1 MB value is never echoed in full.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic.config import JsonDict

from kubetune.api.names import dns_subdomain_problem

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
ECHO_LIMIT = 80
MAX_URI = 4096
MAX_NUM_SAMPLES = 10_000_000  # numSamples oversamples in memory: bounded so 1e11 is refused, not allocated


def clip(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_text(text: str, limit: int = 300) -> str:
    """A whole message cut to ``limit`` characters (the last resort behind :func:`clip`)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------- numbers


def _whole_float(value: Any) -> Any:
    """JSON has one number type: the API server takes ``8.0`` (and ``1e3``) for an integer field, so do we."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _int64(value: int) -> int:
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"{clip(value, 40)} does not fit in a 64-bit integer (the most Kubernetes stores)")
    return value


# Strictness (no "16", no true) comes from the models' ``strict=True``; these add what strict mode lacks.
Int = Annotated[int, BeforeValidator(_whole_float), AfterValidator(_int64)]
Float = Annotated[float, AfterValidator(lambda v: _finite(v))]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number; NaN and Infinity are not allowed")
    return value


# ---------------------------------------------------------------------------------------------------- quantities

# resource.Quantity: <sign><number><suffix>, suffix one of the binary SI (Ki..Ei), decimal SI (n u m "" k M G T P E)
# or a decimal exponent (e/E and a signed integer). A negative size is refused here: no pod takes one.
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
_QUANTITY = re.compile(QUANTITY.removesuffix("$") + r"\Z")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity in base units (bytes, cores); ValueError when it is not one."""
    if not isinstance(text, str) or not _QUANTITY.match(text):
        raise ValueError(f"{clip(text)} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi, 1.5G, 1e9)")
    number = re.match(r"\+?([0-9]*\.?[0-9]*)", text)
    assert number is not None
    digits, suffix = number.group(1), text[number.end() :]
    try:
        value = Decimal(digits)
        if suffix in _BINARY:
            return value * _BINARY[suffix]
        if suffix in _DECIMAL:  # "E" alone is exa
            return value.scaleb(_DECIMAL[suffix])
        exponent = int(suffix[1:])
        if abs(exponent) > 100:
            raise ValueError(f"{clip(text)}: exponent {exponent} is out of range")
        return value.scaleb(exponent)
    except (InvalidOperation, OverflowError) as exc:
        raise ValueError(f"{clip(text)} is not a Kubernetes quantity ({type(exc).__name__})") from None


def quantity_problem(text: Any) -> str | None:
    """Why ``text`` cannot be a pod's resource quantity (cpu, memory, a volume size); None when it can."""
    try:
        value = parse_quantity(text)
    except ValueError as exc:
        return str(exc)
    if value <= 0:
        return f"{clip(text)} must be more than zero"
    if value > INT64_MAX:
        return f"{clip(text)} is larger than Kubernetes can store (at most 2^63-1 bytes or cores)"
    return None


# ---------------------------------------------------------------------------------------------------- text and names

# The same rules as CRD patterns, so `kubectl apply` refuses what validate refuses (kubetune.api.names checks them).
_DNS_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
K8S_NAME_SCHEMA: JsonDict = {"pattern": rf"^{_DNS_LABEL_RE}(\.{_DNS_LABEL_RE})*$", "maxLength": 253}
LABEL_NAME_SCHEMA: JsonDict = {**K8S_NAME_SCHEMA, "maxLength": 63}  # a name that is also a label value

_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")


# Control (Cc), format (Cf: zero-width, bidi overrides ...), surrogate (Cs) and private-use (Co) characters.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\ud800-\udfff\ue000-\uf8ff\U000110bd\U000110cd\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f\U000f0000-\U0010ffff]"
)


def text_problem(value: str, *, allow: str = "") -> str | None:
    """Control, format, surrogate or private-use characters (NUL, newline, bidi overrides ...), except ``allow``."""
    pos = 0
    while (found := _CONTROL.search(value, pos)) is not None:
        if found.group() not in allow:
            return f"contains the control character U+{ord(found.group()):04X} at position {found.start()}; remove it"
        pos = found.end()
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        return (
            f"{clip(value)} is not a Kubernetes label value: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def qualified_name_problem(value: str) -> str | None:
    """A label key or an extended resource name: ``[prefix/]name``, prefix a DNS subdomain, name up to 63."""
    prefix, _, name = value.rpartition("/")
    if "/" in value and (not prefix or dns_subdomain_problem(prefix)):
        return f"{clip(value)}: the prefix before '/' must be a DNS-1123 subdomain (e.g. nvidia.com)"
    if len(name) > 63 or not _NAME_PART.fullmatch(name):
        return (
            f"{clip(value)} is not a qualified name: at most 63 letters, digits, '-', '_' or '.' after an "
            "optional prefix/, starting and ending with a letter or digit"
        )
    return None


# ---------------------------------------------------------------------------------------------------- URIs

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")
# huggingface_hub's validate_repo_id, ASCII only: [namespace/]name, each 1-96 of [A-Za-z0-9_.-],
# not starting or ending with '-' or '.', no '--' or '..', not ending in '.git'.
_REPO_PART = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


def bucket_problem(bucket: str) -> str | None:
    """S3 bucket naming rules (as AWS and MinIO enforce them)."""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket:
        return (
            f"bucket {clip(bucket)} is not a valid S3 bucket name: 3 to 63 lower-case letters, digits, '.' and "
            "'-', starting and ending with a letter or digit"
        )
    if _IP.fullmatch(bucket):
        return f"bucket {clip(bucket)} is formatted as an IP address, which S3 does not allow"
    return None


def repo_id_problem(repo: str) -> str | None:
    """A Hugging Face Hub / ModelScope repository id: ``name`` or ``org/name``."""
    parts = repo.split("/")
    if (
        len(parts) > 2
        or not all(_REPO_PART.fullmatch(p) for p in parts)
        or "--" in repo
        or ".." in repo
        or repo.endswith(".git")
    ):
        return (
            f"{clip(repo)} is not a repository id: org/name (or name), each part 1-96 letters, digits, '-', "
            "'_' or '.', not starting or ending with '-' or '.', without '--' or '..'"
        )
    return None


def uri_shape_problem(uri: str) -> str | None:
    """Whether the part after the scheme is what the fetching client accepts; None when it is (or not checked)."""
    scheme, _, rest = uri.partition("://")
    head, _, tail = rest.partition("/")
    if len(uri) > MAX_URI:
        return f"{clip(uri)} is {len(uri):,} characters; a URI has at most {MAX_URI:,}"
    if scheme == "s3":
        if len(tail.encode("utf-8", "surrogatepass")) > 1024:
            return f"the S3 key of {clip(uri)} is over 1024 bytes, the most S3 allows"
        return bucket_problem(head)
    if scheme in ("hf", "ms"):
        repo = rest.split("?", 1)[0].split("#", 1)[0].strip("/")
        return repo_id_problem(repo)
    if scheme == "configmap":
        problem = dns_subdomain_problem(head)
        if problem:
            return f"ConfigMap name {problem}"
        if not tail or "/" in tail or tail in (".", "..") or len(tail) > 253 or not _CONFIGMAP_KEY.fullmatch(tail):
            return f"{clip(uri)} must be configmap://<name>/<key>, the key made of letters, digits, '-', '_' and '.'"
    if scheme == "pvc":
        problem = dns_subdomain_problem(head)
        if problem:
            return f"PersistentVolumeClaim name {problem}"
        if any(part == ".." for part in tail.split("/")):
            return f"{clip(uri)}: the path inside the claim must not contain '..'"
    return None
