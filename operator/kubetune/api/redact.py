"""Credentials never echoed: one redaction for every message, and one check that keeps them out of URIs.

A URI may carry a secret in two places: its user-info (``https://user:password@host/``) and its
query string (pre-signed URLs: ``X-Amz-Signature``, ``X-Goog-Signature``, Azure ``sig``, ``token``,
``access_token`` ...). :func:`credentials_in` finds both so validation can refuse such a URI and
point to ``credentialsSecret``; :func:`redact` masks both (and ``Bearer`` tokens) in any text
before it becomes an error, a log line, a termination message or a status condition.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# Query parameter names (compared lower-case, percent-decoded) that carry a secret.
SECRET_PARAMS = frozenset(
    {
        "sig",
        "signature",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "auth",
        "authorization",
        "key",
        "api_key",
        "apikey",
        "api-key",
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-goog-credential",
        "googleaccessid",
        "se-sig",
        "sas",
        "sv-sig",
    }
)
_SECRET_PARTS = (
    "signature",
    "token",
    "secret",
    "password",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "private",
)

_URL = re.compile(r"""(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'"<>`]*)""")
_PARAM = re.compile(r"""(?P<sep>[?&;])(?P<name>[^=&#;?\s'"<>]+)=(?P<value>[^&#;\s'"<>`]*)""")
_BEARER = re.compile(r"\b(?P<kind>Bearer|Basic)\s+(?P<value>[A-Za-z0-9._~+/=\-]{16,})")


def is_secret_param(name: str) -> bool:
    key = unquote(name).strip().lower()
    return key in SECRET_PARAMS or any(part in key for part in _SECRET_PARTS)


def _userinfo_end(rest: str) -> int:
    """Index just past the ``@`` that ends a URL's user-info, or -1 when it has none.

    The authority ends at the first ``/``, ``?`` or ``#``; its last ``@`` ends the user-info (as
    urllib splits it). A password holding a raw ``/`` (``user:pa/ss@host``) cuts the authority short
    at ``user:pa``, a port that is not a number: then the user-info runs to the next ``@``.
    """
    authority = re.split(r"[/?#\\]", rest, maxsplit=1)[0]
    if "@" in authority:
        return authority.rindex("@") + 1
    if ":" in authority and not authority.rsplit(":", 1)[1].isdigit() and "@" in rest:
        head = rest.split("?", 1)[0].split("#", 1)[0]
        if "@" in head:
            return head.index("@") + 1
    return -1


def _redact_url(match: re.Match[str]) -> str:
    rest = match["rest"]
    end = _userinfo_end(rest)
    if end > 0:
        rest = f"{MASK}@{rest[end:]}"
    return match["scheme"] + rest


def _redact_param(match: re.Match[str]) -> str:
    if is_secret_param(match["name"]) and match["value"]:
        return f"{match['sep']}{match['name']}={MASK}"
    return match[0]


def redact(text: object) -> str:
    """``text`` with URL user-info, secret query parameters and Bearer/Basic tokens replaced by ``***``."""
    out = str(text)
    if "://" in out:
        out = _URL.sub(_redact_url, out)
    if "=" in out:
        out = _PARAM.sub(_redact_param, out)
    return _BEARER.sub(lambda m: f"{m['kind']} {MASK}", out)


def credentials_in(uri: str) -> str | None:
    """Why ``uri`` carries a credential (user-info or a signature/token query parameter); None when it does not.

    The answer never repeats the secret, so it can go into an error message as is.
    """
    if "://" not in uri:
        return None
    rest = uri.split("://", 1)[1]
    if _userinfo_end(rest) > 0:
        return "carries user-info (user:password@) in the URI"
    query = rest.split("#", 1)[0].split("?", 1)[1] if "?" in rest.split("#", 1)[0] else ""
    for pair in re.split(r"[&;]", query):
        name = pair.split("=", 1)[0]
        if name and is_secret_param(name):
            return f"carries a credential in its query string ({unquote(name)[:40]!r}: a pre-signed or token URL)"
    return None


CREDENTIALS_HINT = (
    "put credentials in a Secret and name it in credentialsSecret (AWS_ACCESS_KEY_ID/"
    "AWS_SECRET_ACCESS_KEY, HF_TOKEN ...), never in the URI: it would be stored in the job's "
    "ConfigMap and shown in status and logs"
)
