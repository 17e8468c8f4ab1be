"""Kubernetes object names, checked the way the API server checks them (one place for every name field).

Full matches only: ``re.fullmatch``, because ``$`` in a Python pattern also matches before a final
newline, so ``"job\\n"`` would pass a ``^...$`` check and then become a path part or a label value.
"""

from __future__ import annotations

import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(_LABEL)
DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def dns_label_problem(value: object, *, max_len: int = DNS1123_LABEL_MAX) -> str | None:
    """Why ``value`` is not an RFC 1123 label (a namespace, a Service, a FineTuneJob name); None when it is."""
    if not isinstance(value, str):
        return f"{_shown(value)} is not a string"
    if not value:
        return "is empty; a DNS-1123 label needs 1 to 63 characters"
    if len(value) > max_len:
        return f"{_shown(value)} is {len(value)} characters; a DNS-1123 label has at most {max_len}"
    if not DNS1123_LABEL.fullmatch(value):
        return (
            f"{_shown(value)} is not a DNS-1123 label: lower-case letters, digits and '-', starting and ending "
            "with a letter or digit"
        )
    return None


def dns_subdomain_problem(value: object, *, max_len: int = DNS1123_SUBDOMAIN_MAX) -> str | None:
    """Why ``value`` is not an RFC 1123 subdomain (most object names: Secrets, ServiceAccounts, PVCs); None when it is."""
    if not isinstance(value, str):
        return f"{_shown(value)} is not a string"
    if not value:
        return "is empty; a DNS-1123 subdomain needs 1 to 253 characters"
    if len(value) > max_len:
        return f"{_shown(value)} is {len(value)} characters; a DNS-1123 subdomain has at most {max_len}"
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            f"{_shown(value)} is not a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', each "
            "dot-separated part starting and ending with a letter or digit"
        )
    return None


def is_dns_label(value: object) -> bool:
    return dns_label_problem(value) is None


def is_dns_subdomain(value: object) -> bool:
    return dns_subdomain_problem(value) is None


def check_dns_label(value: str, *, what: str = "name") -> str:
    """``value`` when it is a DNS-1123 label; ValueError (for pydantic validators) naming ``what`` otherwise."""
    problem = dns_label_problem(value)
    if problem:
        raise ValueError(f"{what} {problem}" if problem.startswith("is ") else f"{what}: {problem}")
    return value


def check_dns_subdomain(value: str, *, what: str = "name") -> str:
    problem = dns_subdomain_problem(value)
    if problem:
        raise ValueError(f"{what} {problem}" if problem.startswith("is ") else f"{what}: {problem}")
    return value
