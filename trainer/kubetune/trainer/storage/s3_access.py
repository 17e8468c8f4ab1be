"""An S3 client whose endpoint has passed the URL guard, and one-line errors for what S3 refused."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.guard import Guard, URLRefused


def s3_client(*, field: str, allow: Iterable[str] = ()) -> Any:
    """An S3 client whose endpoint has passed the URL guard."""
    try:
        client = s3.client()
    except Exception as exc:  # noqa: BLE001 - botocore config errors (bad region, bad endpoint URL)
        raise ConfigError(f"{field}: cannot configure S3 access: {exc}") from None
    guard = Guard.of(field=field, allow=allow, what="S3 endpoint")
    guard.check_url(s3.endpoint_of(client))
    return guard.pin_botocore(client)  # every connection (virtual hosts, redirects) goes to a checked address


def s3_error(field: str, uri: str, exc: Exception) -> ConfigError:
    """The one-line error naming ``field`` for a botocore failure on ``uri``."""
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError

    refused = getattr(exc, "kwargs", {}).get("error") if isinstance(exc, HTTPClientError) else None
    if isinstance(refused, URLRefused):  # the pinned connection refused the address (DNS rebinding)
        return refused
    if isinstance(exc, NoCredentialsError):
        return ConfigError(
            f"{field}: no S3 credentials for {uri}; set credentialsSecret (AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY) or give the pod an AWS role"
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        return ConfigError(f"{field}: S3 refused {uri}: {code} ({exc.response.get('Error', {}).get('Message', '')})")
    return ConfigError(f"{field}: cannot read {uri}: {exc}")
