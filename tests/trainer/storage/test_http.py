"""https:// and http:// sources from local servers (one with a self-signed certificate); configmap:// keys."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetune.api import trainer_config
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.fetch import fetch
from tests.trainer.storage.conftest import LOCAL

ROWS = b'{"instruction": "hi", "output": "hello"}\n'


class Server:
    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None):
        self.hits: list[str] = []
        self.fail_next = 0
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *args: object) -> None:
                pass

            def send_head(self):
                server.hits.append(f"{self.command} {self.path}")
                if self.path.startswith("/to-metadata"):
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.end_headers()
                    return None
                if self.command == "GET" and server.fail_next:
                    server.fail_next -= 1
                    self.send_error(503, "busy")
                    return None
                return super().send_head()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def site(tmp_path: Path, no_proxy_env: None) -> Iterator[Server]:
    root = tmp_path / "site"
    root.mkdir()
    (root / "train.jsonl").write_bytes(ROWS)
    (root / "dataset_info.json").write_text('{"demo": {"file_name": "train.jsonl"}}')
    server = Server(root)
    yield server
    server.close()


def test_http_file_is_cached_by_revision(site: Server, tmp_path: Path) -> None:
    path = fetch(
        f"{site.url}/train.jsonl",
        field="spec.datasets[0].source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        kind="dataset",
        allow=LOCAL,
    )
    assert path.name == "train.jsonl" and path.read_bytes() == ROWS
    gets = [h for h in site.hits if h.startswith("GET")]
    again = fetch(
        f"{site.url}/train.jsonl",
        field="spec.datasets[0].source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        kind="dataset",
        allow=LOCAL,
    )
    assert again == path and [h for h in site.hits if h.startswith("GET")] == gets  # HEAD only


def test_http_retries_5xx(site: Server, tmp_path: Path) -> None:
    site.fail_next = 2
    path = fetch(
        f"{site.url}/dataset_info.json",
        field="spec.datasetRegistry.source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        allow=LOCAL,
    )
    assert path.read_text().startswith('{"demo"') and site.fail_next == 0


def test_http_errors_name_the_field(site: Server, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spec.datasets\[2\].source: .*/missing.jsonl answered HTTP 404"):
        fetch(
            f"{site.url}/missing.jsonl",
            field="spec.datasets[2].source",
            work_dir=tmp_path,
            cache_dir=tmp_path,
            allow=LOCAL,
        )
    with pytest.raises(ConfigError, match="redirect host '169.254.169.254' is a cloud metadata address"):
        fetch(
            f"{site.url}/to-metadata/x.json",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path,
            allow=LOCAL,
        )
    with pytest.raises(ConfigError, match="host '127.0.0.1' is a loopback address"):
        fetch(f"{site.url}/train.jsonl", field="spec.datasets[0].source", work_dir=tmp_path, cache_dir=tmp_path)


def test_https_with_a_self_signed_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proxy_env: None
) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "train.jsonl").write_bytes(ROWS)
    cert, key = self_signed(tmp_path)
    server = Server(root, tls=(cert, key))
    try:
        with pytest.raises(ConfigError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted yet
            fetch(
                f"{server.url}/train.jsonl",
                field="spec.datasets[0].source",
                work_dir=tmp_path,
                cache_dir=tmp_path / "c",
                allow=LOCAL,
            )
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        path = fetch(
            f"{server.url}/train.jsonl",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
            allow=LOCAL,
        )
        assert path.read_bytes() == ROWS
    finally:
        server.close()


def test_configmap_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cm" / "my-data").mkdir(parents=True)
    (tmp_path / "cm" / "my-data" / "train.jsonl").write_bytes(ROWS)
    monkeypatch.setattr(trainer_config, "CONFIGMAP_ROOT", str(tmp_path / "cm"))
    path = fetch(
        "configmap://my-data/train.jsonl", field="spec.datasets[0].source", work_dir=tmp_path, cache_dir=tmp_path
    )
    assert path.read_bytes() == ROWS
    with pytest.raises(ConfigError, match=r"spec.datasets\[0\].source: ConfigMap 'my-data' key 'other.json' is not"):
        fetch("configmap://my-data/other.json", field="spec.datasets[0].source", work_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="must be configmap://<name>/<key>"):
        fetch("configmap://only-a-name", field="spec.datasets[0].source", work_dir=tmp_path, cache_dir=tmp_path)
