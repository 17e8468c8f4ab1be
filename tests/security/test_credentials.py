"""Credentials never echoed, never stored: refused inside URIs at validation, redacted in every message."""

from __future__ import annotations

import copy
import io
import logging
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.api.redact import credentials_in, redact
from kubetune.api.validation import InvalidFineTuneJob, parse_job

SECRET = "Zq9sEcReTvAlUe42"
BASE = yaml.safe_load(Path("examples/ppo-lora.yaml").read_text())

URIS = [
    f"https://user:{SECRET}@example.com/data.jsonl",
    f"https://{SECRET}@example.com/data.jsonl",
    f"s3://user:{SECRET}@bucket/model/",
    (
        f"https://bucket.s3.amazonaws.com/d.jsonl?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA{SECRET}"
        f"&X-Amz-Signature={SECRET}"
    ),
    f"https://storage.googleapis.com/b/d.jsonl?X-Goog-Signature={SECRET}",
    f"https://acct.blob.core.windows.net/c/d.jsonl?sv=2022-11-02&sig={SECRET}",
    f"https://example.com/d.jsonl?token={SECRET}",
    f"https://example.com/d.jsonl?access_token={SECRET}",
    f"s3://bucket/model/?X-Amz-%53ignature={SECRET}",
    f"https://user:pa/ss{SECRET}@example.com/x",
]

FIELDS = {
    "spec.model.source": lambda d, u: d["spec"]["model"].__setitem__("source", u),
    "spec.datasets[0].source": lambda d, u: d["spec"]["datasets"][0].__setitem__("source", u),
    "spec.datasetRegistry.source": lambda d, u: d["spec"].__setitem__("datasetRegistry", {"source": u}),
    "spec.output.uri": lambda d, u: d["spec"]["output"].__setitem__("uri", u),
    "spec.training.rewardModel.source": lambda d, u: d["spec"]["training"]["rewardModel"].__setitem__("source", u),
}


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("uri", URIS, ids=lambda u: u.split("://")[0] + ":" + str(URIS.index(u)))
def test_credentials_in_any_uri_are_refused_at_validation(field: str, uri: str) -> None:
    doc = copy.deepcopy(BASE)
    FIELDS[field](doc, uri)
    with pytest.raises(InvalidFineTuneJob) as err:
        parse_job(doc)
    message = str(err.value)
    assert SECRET not in message
    assert any(line.startswith(field) for line in message.splitlines()), message
    assert "credentialsSecret" in message or "unsupported URI" in message  # refused for the credential or the scheme


def test_validate_cli_never_prints_the_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    doc = copy.deepcopy(BASE)
    doc["spec"]["datasets"][0]["source"] = URIS[0]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 1
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "credentialsSecret" in out.err


def test_clean_uris_still_validate() -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["datasets"][0]["source"] = "https://example.com/d.jsonl?version=3&format=json"
    parse_job(doc)
    assert credentials_in("s3://bucket/path/with@at/") is None
    assert credentials_in("hf://org/name") is None


# ----------------------------------------------------------------------------------------------- redaction

_secret = st.text(alphabet=string.ascii_letters + string.digits + "-._~", min_size=12, max_size=30)
_host = st.sampled_from(["example.com", "10.0.0.1:9000", "[::1]:80", "minio.svc.cluster.local", "h"])
_param = st.sampled_from(
    [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "Signature",
        "sig",
        "token",
        "access_token",
        "X-Goog-Signature",
        "api_key",
        "client_secret",
        "AWSAccessKeyId",
        "SIG",
    ]
)
_wrap = st.sampled_from(["{}", "'{}'", '"{}"', "({})", "<{}>", "cannot GET {}: HTTP 500", "{}; retrying in 0.2s"])


@settings(max_examples=300, deadline=None)
@given(
    secret=_secret,
    user=_secret,
    host=_host,
    param=_param,
    wrap=_wrap,
    scheme=st.sampled_from(["https", "http", "s3", "hf"]),
    form=st.integers(0, 3),
)
def test_redact_never_leaves_a_secret(
    secret: str, user: str, host: str, param: str, wrap: str, scheme: str, form: int
) -> None:
    urls = [
        f"{scheme}://{user}:{secret}@{host}/a/b",
        f"{scheme}://{secret}@{host}/a",
        f"{scheme}://{host}/a?x=1&{param}={secret}&y=2",
        f"{scheme}://{user}:{secret}@{host}/a?{param}={secret}",
    ]
    text = wrap.format(urls[form])
    out = redact(text)
    assert secret not in out, (text, out)
    assert host.split(":")[0].strip("[]") in out  # the host stays readable
    assert credentials_in(urls[form]) is not None


def test_trainer_errors_logs_and_termination_messages_are_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.trainer.__main__ import write_termination_message
    from kubetune.trainer.errors import ConfigError
    from kubetune.trainer.logging import get_logger, setup

    url = f"https://u:{SECRET}@h/x?sig={SECRET}"
    assert SECRET not in str(ConfigError(f"spec.model.source: cannot read {url}"))
    setup()
    stream = io.StringIO()
    handler = logging.getLogger("kubetune").handlers[0]
    old = handler.setStream(stream)
    try:
        get_logger("kubetune.trainer.storage.http_fetch").warning("%s: HTTP 503; retrying in %.2fs", url, 0.1)
        try:
            raise RuntimeError(url)
        except RuntimeError:
            get_logger("kubetune.test").exception("failed")
    finally:
        handler.setStream(old)
    assert "retrying" in stream.getvalue() and SECRET not in stream.getvalue()
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    write_termination_message(f"RuntimeError: {url}")
    assert SECRET not in log.read_text() and "h/x" in log.read_text()


def test_operator_status_never_shows_a_secret_from_a_pod() -> None:
    from kubetune.operator.status import termination_message

    pod = {
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 3,
                            "message": f"spec.datasets[0].source: cannot GET https://u:{SECRET}@h/x?X-Amz-Signature={SECRET}",
                        }
                    }
                }
            ]
        }
    }
    message = termination_message([pod])
    assert message and SECRET not in message and "cannot GET" in message


def test_http_retry_warnings_and_errors_never_echo_a_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proxy_env: None
) -> None:
    """A pre-signed URL given on the command line (not validated) still never reaches a log line or an error."""
    import http.server
    import threading

    from kubetune.trainer.errors import ConfigError
    from kubetune.trainer.logging import setup
    from kubetune.trainer.storage import s3
    from kubetune.trainer.storage.fetch import fetch

    class Failing(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var, value in (
        ("KUBETUNE_S3_ATTEMPTS", "2"),
        ("KUBETUNE_S3_BACKOFF_S", "0.01"),
        ("KUBETUNE_HTTP_BACKOFF_S", "0.01"),
    ):
        monkeypatch.setenv(var, value)
    if hasattr(s3, "RetryPolicy") and hasattr(s3, "RETRY"):
        monkeypatch.setattr(s3, "RETRY", s3.RetryPolicy(attempts=2, base_s=0.01, cap_s=0.01))
    setup()
    stream = io.StringIO()
    handler = logging.getLogger("kubetune").handlers[0]
    old = handler.setStream(stream)
    url = f"http://127.0.0.1:{server.server_address[1]}/d.jsonl?X-Amz-Credential=AKIA{SECRET}&X-Amz-Signature={SECRET}"
    try:
        with pytest.raises(ConfigError) as err:
            fetch(url, field="--dataset-info", work_dir=tmp_path, cache_dir=tmp_path / "c", allow=["127.0.0.1"])
    finally:
        handler.setStream(old)
        server.shutdown()
        server.server_close()
    assert "retrying" in stream.getvalue()
    assert SECRET not in stream.getvalue() and SECRET not in str(err.value)
