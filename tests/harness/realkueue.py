"""Kueue's controller (sigs.k8s.io/kueue, built by scripts/tools.d/40-controlplane.sh) on the real control plane.

``kueue`` (session fixture, started on first use): installs Kueue's CRDs (from the module, copied to
``<cache>/kueue-crds``), with their conversion webhook (v1beta1 ⇄ v1beta2) pointing at
``https://127.0.0.1:<port>/convert``, the Job and Kueue-object admission webhooks of Kueue's own manifests
(``clientConfig.url`` instead of an in-cluster Service, the fixture's CA as ``caBundle``), and runs the
``kueue`` binary as a local manager: webhook server on 127.0.0.1, no leader election, the ``batch/job``
integration only, the visibility server off, health probes on a free port. Kueue acts as the cluster admin
(system:masters). Certificates: Kueue v0.17 without its internal cert management insists on
``/etc/kueue/metrics/certs``, so its cert management stays on and is handed a CA (``kueue-ca``) and a
serving certificate (``kueue-webhook-service.kueue-system.svc`` and 127.0.0.1, ten years) that it accepts
as valid: it keeps them, injects the CA into the webhooks and CRDs, and serves them from ``certDir``
(written here, where a kubelet would mount the Secret).
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import urllib3
import yaml

from tests.harness.realcluster import ControlPlane, free_port

CONVERTED = {"clusterqueues", "localqueues", "cohorts", "workloads", "multikueueclusters"}
WEBHOOK_PATHS = ("/mutate-batch-v1-job", "/validate-batch-v1-job", "-kueue-x-k8s-io-")


def kueue_module_dir(cp: ControlPlane) -> Path | None:
    """The Kueue module's source (for its webhook manifests) from the Go module cache."""
    import glob
    import os
    import subprocess

    modcache = os.environ.get("GOMODCACHE")
    if not modcache:
        try:
            modcache = subprocess.run(
                ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=False, timeout=30
            ).stdout.strip()
        except OSError:
            modcache = ""
    modcache = modcache or str(Path.home() / "go" / "pkg" / "mod")
    found = sorted(glob.glob(f"{modcache}/sigs.k8s.io/kueue@v*"))
    return Path(found[-1]) if found else None


def kueue_pki(out: Path) -> dict[str, bytes]:
    """The CA and serving certificate Kueue's cert rotator accepts as valid (see the module docstring)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    until = now + dt.timedelta(days=3650)

    def pem(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "kueue-ca"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kueue")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kueue-ca")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                key_cert_sign=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns = "kueue-webhook-service.kueue-system.svc"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": pem(ca_key),
        "tls.crt": cert.public_bytes(serialization.Encoding.PEM),
        "tls.key": pem(key),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


class Kueue:
    def __init__(self, cp: ControlPlane):
        self.cp = cp
        self.crd_dir = cp.bin.parent / "kueue-crds"
        self.workdir = cp.workdir / "kueue"
        self.port = 0
        self.health_port = 0

    def _webhooks(self) -> list[dict[str, Any]]:
        path = self.crd_dir / "webhooks.yaml"
        if not path.exists():
            mod = kueue_module_dir(self.cp)
            assert mod is not None, (
                "Kueue's webhook manifests: neither <cache>/kueue-crds/webhooks.yaml nor the module"
            )
            path = mod / "config/components/webhook/manifests.yaml"
        ca = base64.b64encode(self.pki["ca.crt"]).decode()
        out = []
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
                continue
            doc = copy.deepcopy(doc)
            doc["metadata"] = {"name": "kueue-" + doc["metadata"]["name"]}
            hooks = []
            for w in doc["webhooks"]:
                svc = w["clientConfig"].get("service") or {}
                if not any(p in svc.get("path", "") for p in WEBHOOK_PATHS):
                    continue
                w["clientConfig"] = {"url": f"https://127.0.0.1:{self.port}{svc['path']}", "caBundle": ca}
                w["namespaceSelector"] = {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", "kueue-system"],
                        }
                    ]
                }
                hooks.append(w)
            doc["webhooks"] = hooks
            out.append(doc)
        return out

    def _crds(self) -> list[dict[str, Any]]:
        ca = base64.b64encode(self.pki["ca.crt"]).decode()
        out = []
        for f in sorted(self.crd_dir.glob("kueue.x-k8s.io_*.yaml")):
            crd = yaml.safe_load(f.read_text())
            if crd["spec"]["names"]["plural"] in CONVERTED:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "conversionReviewVersions": ["v1"],
                        "clientConfig": {"url": f"https://127.0.0.1:{self.port}/convert", "caBundle": ca},
                    },
                }
            out.append(crd)
        return out

    def start(self) -> Kueue:
        binary = self.cp.bin / "kueue"
        assert binary.exists() and self.crd_dir.is_dir(), f"{binary} or {self.crd_dir} missing: run `make tools`"
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs = self.workdir / "certs"
        self.pki = kueue_pki(certs)
        if self.cp.api.get("v1/namespaces", None, "kueue-system") is None:
            self.cp.api.create(
                "v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kueue-system"}}
            )
        if self.cp.api.get("v1/secrets", "kueue-system", "kueue-webhook-server-cert") is None:
            self.cp.api.create(
                "v1/secrets",
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {"name": "kueue-webhook-server-cert", "namespace": "kueue-system"},
                    "data": {k: base64.b64encode(v).decode() for k, v in self.pki.items()},
                },
            )

        def start() -> None:
            self.port, self.health_port = free_port(), free_port()
            config = {
                "apiVersion": "config.kueue.x-k8s.io/v1beta2",
                "kind": "Configuration",
                "namespace": "kueue-system",
                "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
                "metrics": {"bindAddress": "0"},
                "webhook": {"port": self.port, "host": "127.0.0.1", "certDir": str(certs)},
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {
                    "enable": True,
                    "webhookServiceName": "kueue-webhook-service",
                    "webhookSecretName": "kueue-webhook-server-cert",
                },
                "manageJobsWithoutQueueName": False,
                "integrations": {"frameworks": ["batch/job"]},
            }
            (self.workdir / "config.yaml").write_text(yaml.safe_dump(config))
            # the CRDs' conversion webhook and the admission webhooks name this port
            crds = self.workdir / "crds.yaml"
            crds.write_text(yaml.safe_dump_all(self._crds()))
            self.cp.kubectl_sync("apply", "--server-side", "--force-conflicts", "-f", str(crds))
            self.cp.kubectl_sync("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
            http = urllib3.PoolManager(retries=False, timeout=2)
            self.cp._spawn(
                "kueue",
                [
                    str(self.cp.bin / "kueue"),
                    f"--config={self.workdir / 'config.yaml'}",
                    f"--kubeconfig={self.cp.admin_kubeconfig}",
                    "--feature-gates=VisibilityOnDemand=false",
                    "--zap-log-level=info",
                ],
                ready=lambda: http.request("GET", f"http://127.0.0.1:{self.health_port}/readyz").status == 200,
                timeout=120,
            )

        self.cp._with_ports(start)
        hooks = self.workdir / "webhooks.yaml"
        hooks.write_text(yaml.safe_dump_all(self._webhooks()))
        self.cp.kubectl_sync("apply", "--server-side", "--force-conflicts", "-f", str(hooks))
        return self

    def stop(self) -> None:
        # webhooks with failurePolicy Fail must not outlive their server
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            for name in ("kueue-mutating-webhook-configuration", "kueue-validating-webhook-configuration"):
                try:
                    self.cp.api.delete(f"admissionregistration.k8s.io/v1/{kind}", None, name)
                except Exception:  # noqa: BLE001, S112 - the API server may be gone already
                    continue
        proc = self.cp.procs.get("kueue")
        if proc is not None:
            proc.stop()


try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def kueue(control_plane: ControlPlane) -> Any:
        k = Kueue(control_plane).start()
        try:
            yield k
        finally:
            k.stop()
