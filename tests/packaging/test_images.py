"""The images themselves: both Dockerfile targets built for real (``make images``: buildah from local Debian
bases, the trainer's CPU variant), inspected and run.

- what is in them, read from the built images (``buildah inspect`` / ``buildah run``), not from the Dockerfile;
- the build is cached: an unchanged tree does not rebuild, a changed source reuses the dependency layers;
- the operator image runs ``kubetune operator`` with the args, env, user, volumes and read-only root of the
  chart's Deployment against the test Kubernetes API (the real control plane when its binaries are built,
  else the emulator) and reconciles a FineTuneJob;
- the trainer image runs ``kubetune-train`` as the operator's Job pod would (the Job and ConfigMap from the
  operator's own builders: uid 1000, the config/shm/cache/state volumes, credentials from a Secret) with a
  read-only root filesystem, training a LoRA adapter into the moto S3 server; ``kubetune artifacts verify``
  checks what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import images as im
from tests.harness.realcluster import control_plane  # noqa: F401 - the session's real control plane

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load((ROOT / "charts" / "kubetune" / "values.yaml").read_text())
REPORT = ROOT / ".tools" / "images-report.json"

# The first test may build the images (make tools does it before the suite: then they are reused).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def images() -> im.BuiltImages:
    try:
        return im.ensure_images()
    except im.ImagesUnavailable as exc:
        pytest.fail(str(exc))


def _run(image: str, *command: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    with im.container(image, list(command), **kw) as ctr:
        return ctr.run(timeout=300)


def _pin(extra: str, package: str) -> str:
    found = [r for r in PYPROJECT["project"]["optional-dependencies"][extra] if re.match(rf"{package}\s*==", r)]
    assert found, f"{package} is not pinned in [{extra}]"
    return found[0].split("==")[1]


# ------------------------------------------------------------------------------------------ what is in them


def test_images_run_as_their_non_root_users_with_the_entrypoints(images: im.BuiltImages) -> None:
    chart_uid = CHART_VALUES["podSecurityContext"]["runAsUser"]
    from kubetune.operator.manifests.job import RUN_AS_USER

    for image, uid, entrypoint in (
        (images.operator, chart_uid, ["kubetune", "operator"]),
        (images.trainer, RUN_AS_USER, ["kubetune-train"]),
    ):
        config = im.image_config(image)["config"]
        assert config["User"] == f"{uid}:{uid}", (image, config["User"])
        assert config["Entrypoint"] == entrypoint, (image, config["Entrypoint"])
        # the process really runs as that user (no --user: the image's USER), in its home, and cannot write /
        proc = _run(
            image, "sh", "-c", "id -u; id -g; pwd; touch /opt/probe 2>/dev/null && echo writable || echo denied"
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [str(uid), str(uid), config["WorkingDir"], "denied"], proc.stdout
        # the entrypoint is an installed console script on PATH
        proc = _run(image, "sh", "-c", f"command -v {entrypoint[0]}")
        assert proc.returncode == 0 and proc.stdout.strip().endswith(f"/bin/{entrypoint[0]}"), proc


def test_operator_image_has_the_operator_and_no_torch(images: im.BuiltImages) -> None:
    check = (
        "import importlib.util, json, sys, kopf, kubernetes, kubetune.operator.handlers.finetunejob, kubetune.cli;"
        "print(json.dumps({'torch': importlib.util.find_spec('torch') is not None, 'loaded': 'torch' in sys.modules,"
        " 'kopf': kopf.__version__ if hasattr(kopf, '__version__') else None}))"
    )
    proc = _run(images.operator, "python", "-c", check)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["torch"] is False and found["loaded"] is False, found
    proc = _run(images.operator, "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(proc.stdout)}
    assert "kopf" in names and "kubetune" in names
    assert not names & {"torch", "transformers", "deepspeed", "bitsandbytes", "triton"}, names
    assert not [n for n in names if n.startswith("nvidia-")], names
    proc = _run(images.operator, "kubetune", "operator", "--help")
    assert proc.returncode == 0 and "--all-namespaces" in proc.stdout, proc.stderr[-2000:]


def test_trainer_image_imports_the_training_stack_at_the_pinned_versions(images: im.BuiltImages) -> None:
    modules = ["torch", "transformers", "peft", "trl", "accelerate", "deepspeed", "bitsandbytes"]
    check = (
        "import importlib, json; mods = " + repr(modules) + "; "
        "import kubetune.trainer.runner; "
        "print(json.dumps({m: importlib.import_module(m).__version__ for m in mods}))"
    )
    proc = _run(images.trainer, "python", "-c", check)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = json.loads(proc.stdout.strip().splitlines()[-1])
    for module in modules:
        assert versions[module].split("+")[0] == _pin("trainer", module), (module, versions[module])
    proc = _run(images.trainer, "kubetune-train", "--help")
    assert proc.returncode == 0 and "--config" in proc.stdout, proc.stderr[-2000:]


def test_image_sizes_are_reported(images: im.BuiltImages, record_property: Any) -> None:
    sizes = {"operator": im.image_size(images.operator), "trainer": im.image_size(images.trainer)}
    report = {
        "sizes": {k: im.human(v) for k, v in sizes.items()},
        "bytes": sizes,
        "driver": images.driver,
        "hash": images.hash,
    }
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    for name, size in sizes.items():
        record_property(f"{name}_image_bytes", size)
    print(f"\nimage sizes: {report['sizes']}")
    # The operator image carries Python and kopf only; the trainer carries torch and its CUDA libraries.
    assert 50e6 < sizes["operator"] < 600e6, report
    assert sizes["trainer"] > 5 * sizes["operator"], report


def test_an_unchanged_tree_is_not_rebuilt(images: im.BuiltImages) -> None:
    before = {
        i: im.image_config(i)["config"]["Labels"]["io.kubetune.build-hash"] for i in (images.operator, images.trainer)
    }
    again = im.ensure_images(timeout=300)
    assert again.hash == images.hash
    assert "building" not in again.log, again.log
    assert again.log.count("is up to date") == 2, again.log
    assert {
        i: im.image_config(i)["config"]["Labels"]["io.kubetune.build-hash"] for i in (again.operator, again.trainer)
    } == before


def test_a_source_change_reuses_the_dependency_layers(images: im.BuiltImages, tmp_path: Path) -> None:
    """The operator target from a copy of the tree with one source file changed: every layer up to and
    including the dependency install comes from the cache; only the wheel and its install are rebuilt."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for item in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, ctx / item)
    for item in ("operator", "trainer"):
        shutil.copytree(ROOT / item, ctx / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    changed = ctx / "operator" / "kubetune" / "operator" / "settings.py"
    changed.write_text(changed.read_text() + f"\n# changed by {__name__}: {uuid.uuid4().hex}\n")
    args = im.BUILD_ARGS.read_text().splitlines()
    assert any(a.startswith("PYTHON_IMAGE=localhost/") for a in args), args
    tag = f"localhost/kubetune-operator:changed-{uuid.uuid4().hex[:6]}"
    try:
        proc = subprocess.run(
            [
                str(im.KT_BUILDAH),
                "bud",
                "--layers",
                "--isolation",
                "chroot",
                "--network",
                "host",
                "--pull-never",
                "--target",
                "operator",
                *[f for a in args for f in ("--build-arg", a)],
                "-t",
                tag,
                ".",
            ],
            cwd=ctx,
            capture_output=True,
            text=True,
            check=False,
            timeout=1200,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout
        # the dependency install is a cache hit; the wheel stage's COPY of the sources is not
        deps = out.index('python -c "${PROJECT_REQUIREMENTS}" /tmp/pyproject.toml operator')
        assert "Using cache" in out[deps : deps + 400], out[deps - 200 : deps + 600]
        src = out.index("COPY operator/ operator/")
        assert "Using cache" not in out[src : src + 300], out[src : src + 600]
        layers_before = im.image_config(images.operator)["rootfs"]["diff_ids"]
        layers_after = im.image_config(tag)["rootfs"]["diff_ids"]
        assert len(layers_after) == len(layers_before)
        same = [a == b for a, b in zip(layers_before, layers_after, strict=True)]
        # the layers up to the dependencies are shared; only the last ones (the wheel's COPY and install) differ
        first = same.index(False)
        assert first >= len(same) - 3 and same.count(False) <= 3, same
    finally:
        im.buildah("rmi", tag, check=False)


def test_a_read_only_root_refuses_writes_even_to_root(images: im.BuiltImages, tmp_path: Path) -> None:
    """The runner's read-only root (buildah run has no flag for it): even uid 0 cannot write outside the
    volumes, while a mounted volume stays writable."""
    vol = tmp_path / "vol"
    vol.mkdir()
    proc = _run(
        images.trainer,
        "sh",
        "-c",
        "touch /opt/kubetune/probe; echo rc=$?; touch /data/ok && echo wrote",
        user="0:0",
        read_only_root=True,
        mounts=[im.Mount("/data", vol)],
    )
    assert "Read-only file system" in proc.stderr and "rc=1" in proc.stdout and "wrote" in proc.stdout, proc
    assert (vol / "ok").exists()


# ------------------------------------------------------------------------------------------ running them


def node_ip() -> str | None:
    """This machine's address on its default route (not loopback): what a pod on the host network would use
    to reach a service on the node. None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent for a UDP connect
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.fixture
def node_s3(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """moto's S3 server on the node's address (the trainer's URL guard refuses loopback endpoints, as it would
    in a pod), a bucket on it, and the Secret data a storage credentials Secret would hold."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.servers import free_port

    ip = node_ip()
    if ip is None:
        pytest.fail("this machine has no non-loopback IPv4 address for the S3 server the container talks to")
    port = free_port()
    server = ThreadedMotoServer(ip_address=ip, port=port, verbose=False)
    server.start()
    creds = {
        "AWS_ENDPOINT_URL": f"http://{ip}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    bucket = f"kt-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=creds["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    try:
        yield creds["AWS_ENDPOINT_URL"], bucket, creds
    finally:
        server.stop()


def upload_inputs(creds: dict[str, str], bucket: str, model_dir: Path) -> tuple[str, str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=creds["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"models/tiny/{path.relative_to(model_dir)}")
    s3.upload_file(str(ROOT / "examples" / "data" / "identity.json"), bucket, "data/identity.json")
    return f"s3://{bucket}/models/tiny/", f"s3://{bucket}/data/identity.json"


def tiny_lora_spec(model: str, data: str, output: str, secret: str) -> dict[str, Any]:
    return {
        "model": {"source": model, "credentialsSecret": secret},
        "datasets": [{"name": "identity", "source": data}],
        "method": {"type": "lora", "lora": {"rank": 4}},
        "training": {"maxSteps": 2, "batchSize": 4, "learningRate": 0.01, "cutoffLen": 64, "scheduler": "constant"},
        "resources": {"nodes": 1, "gpusPerNode": 0, "sharedMemory": "256Mi", "cacheSize": "2Gi"},
        "output": {"uri": output, "credentialsSecret": secret},
    }


def verify_artifact(uri: str, creds: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``kubetune artifacts verify`` from the host, with the credentials the Secret holds."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "kubetune"), "artifacts", "verify", uri],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, **creds},
    )


def test_trainer_image_trains_as_the_job_pod_into_s3(
    images: im.BuiltImages, tiny_model_dir: Path, tmp_path: Path, node_s3: tuple[str, str, dict[str, str]]
) -> None:
    """The operator's own Job and ConfigMap for a tiny LoRA SFT, run from the trainer image like the kubelet
    would: uid 1000, the Job's env (credentials from the Secret via envFrom, the completion index from the
    pod's annotation), its config/shm/cache/state volumes, a read-only root; the adapter goes to moto S3."""
    from kubetune.api.v1alpha1 import FineTuneJob
    from kubetune.operator.manifests import BuildOptions, Resolved, output_uri
    from kubetune.operator.manifests.configmap import build_configmap
    from kubetune.operator.manifests.job import COMPLETION_INDEX_ANNOTATION, build_job
    from kubetune.operator.manifests.names import CONFIG_DIR
    from tests.servers import free_port

    endpoint, bucket, creds = node_s3
    model, data = upload_inputs(creds, bucket, tiny_model_dir)
    uri = f"s3://{bucket}/runs/in-image"
    ftj = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "in-image", "namespace": "default"},
            "spec": tiny_lora_spec(model, data, uri, "s3-credentials"),
        }
    )
    options = BuildOptions(trainer_image=images.trainer, metrics_port=free_port())
    configmap = build_configmap(ftj, options, Resolved(output_uri=output_uri(ftj, options)))
    job = build_job(ftj, options)
    template = job["spec"]["template"]
    pod = {
        "metadata": {
            "name": f"{job['metadata']['name']}-0-x7k2p",
            "namespace": "default",
            "labels": template["metadata"]["labels"],
            "annotations": {COMPLETION_INDEX_ANNOTATION: "0"},
        },
        "spec": template["spec"],
        "status": {"podIP": node_ip()},
    }
    assert pod["spec"]["containers"][0]["image"] == images.trainer
    configmaps = {configmap["metadata"]["name"]: configmap["data"]}
    secrets = {"s3-credentials": creds}
    ctr, term = im.pod_container(
        pod, images.trainer, tmp_path / "pod", configmaps.__getitem__, secrets.__getitem__, read_only_root=True
    )
    # what the runner took from the Job: the user, the command, the four volumes
    assert ctr.user == "1000:1000" and ctr.command[:2] == ["kubetune-train", "--config"]
    targets = {m.target: m for m in ctr.mounts}
    # /dev/shm: chroot isolation gives the container the host's (see tests/harness/images.py)
    assert targets[CONFIG_DIR].read_only and "/dev/shm" not in targets
    assert {"/var/cache/kubetune", "/var/lib/kubetune", "/run/termination-log"} <= set(targets)
    assert ctr.env["KUBETUNE_TERMINATION_LOG"] == "/run/termination-log", "/dev is the host's under chroot isolation"
    assert ctr.env["AWS_ENDPOINT_URL"] == endpoint and ctr.env["NODE_RANK"] == "0"
    if "/tmp" not in targets:
        # The Job mounts no /tmp (its root is writable: no readOnlyRootFilesystem), and Python's tempfile, which
        # torch's import already needs, finds no usable folder on a read-only root; a scratch emptyDir as the
        # chart gives the operator (test_job_pods_can_run_with_a_read_only_root checks the Job itself).
        scratch = tmp_path / "pod" / "volumes" / "tmp"
        scratch.mkdir(parents=True)
        os.chown(scratch, 1000, 1000)
        ctr.mounts.append(im.Mount("/tmp", scratch))
    with ctr:
        proc = ctr.run(timeout=1200)
    log = proc.stdout + proc.stderr
    message = im.termination_message(term, log, proc.returncode, "FallbackToLogsOnError")
    assert proc.returncode == 0, log[-6000:]
    assert message.startswith("succeeded"), message
    verified = verify_artifact(uri, creds)
    assert verified.returncode == 0, verified.stderr
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/in-image/manifest.json")["Body"].read())
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {f["path"] for f in manifest["files"]}
    assert manifest["baseModel"]["source"] == model


def test_job_pods_can_run_with_a_read_only_root() -> None:
    """PodSecurity "restricted" does not require it, but the operator's own Deployment runs read-only; the
    trainer's Job should too, with a writable /tmp (an emptyDir), as the run above needs."""
    from kubetune.api.v1alpha1 import FineTuneJob
    from kubetune.operator.manifests import BuildOptions
    from kubetune.operator.manifests.job import build_job

    ftj = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "ro", "namespace": "default"},
            "spec": tiny_lora_spec("s3://bkt/m/", "s3://bkt/d.json", "s3://bkt/o", "s"),
        }
    )
    pod = build_job(ftj, BuildOptions())["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"].get("readOnlyRootFilesystem") is True
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


# ------------------------------------------------------------------------------------------ the operator image


def chart_operator_pod(values: dict[str, Any]) -> dict[str, Any]:
    """The pod the chart's Deployment makes (``helm template`` with ``values``), as the kubelet would see it."""
    from tests.chart.helm import one, template

    deployment = one(template(values), "Deployment")
    return {
        "metadata": {
            "name": f"{deployment['metadata']['name']}-5d8f7-q2x9z",
            "namespace": deployment["metadata"]["namespace"],
            "uid": str(uuid.uuid4()),
            "labels": deployment["spec"]["template"]["metadata"]["labels"],
        },
        "spec": deployment["spec"]["template"]["spec"],
        "status": {"podIP": "127.0.0.1", "hostIP": "127.0.0.1"},
    }


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


async def _wait(check: Any, timeout: float, what: str, log: Path, proc: subprocess.Popen[bytes] | None = None) -> Any:
    """Polls ``check`` until it is truthy; fails at ``timeout``, or at once when ``proc`` (the container
    that should make it true) has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline and (proc is None or proc.poll() is None):
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.5)
    ended = "" if proc is None or proc.returncode is None else f" (the container exited {proc.returncode})"
    raise AssertionError(
        f"{what}: not within {timeout}s{ended} (last {last!r})\n--- operator log ---\n"
        f"{log.read_text(errors='replace')[-5000:] if log.exists() else ''}"
    )


async def test_operator_image_reconciles_a_finetunejob(
    images: im.BuiltImages, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`kubetune operator` from the image, with the chart Deployment's args, env, user, /tmp volume and
    read-only root, logged in like a pod (the ServiceAccount token mounted where the kubelet mounts it, the
    KUBERNETES_SERVICE_* env), against the real control plane; a FineTuneJob gets its ConfigMap and Job
    (with the chart's trainer image) and its status follows the pod that kwok runs."""
    from tests.harness import realcluster as rc

    try:
        rc.bin_dir()
    except rc.ControlPlaneMissing as exc:
        if os.environ.get("KUBETUNE_REQUIRE_CONTROLPLANE"):
            pytest.fail(str(exc))
        return await _operator_against_the_emulator(images, tmp_path, request)
    cp: rc.ControlPlane = request.getfixturevalue("control_plane")
    ns = await asyncio.to_thread(cp.create_namespace, rc.namespace_name(request.node.name))
    mark = cp.audit_mark()
    async with operator_container(images, cp, ns, tmp_path) as (log, metrics):
        cp.api.create(
            rc.FTJ,
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "imaged", "namespace": ns},
                "spec": {
                    "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                    "datasets": [{"name": "identity", "source": "s3://data/identity.json"}],
                    "resources": {"nodes": 1, "gpusPerNode": 1},
                    "output": {"uri": "s3://out/imaged"},
                },
            },
            ns,
        )
        job = await _wait(lambda: cp.api.get("batch/v1/jobs", ns, "imaged"), 90, "the Job", log)
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == images.trainer
        assert cp.api.get("v1/configmaps", ns, "imaged-trainer")
        # kwok runs the pod on a fake GPU node; the operator's status follows it
        await _wait(
            lambda: (cp.api.get(rc.FTJ, ns, "imaged") or {}).get("status", {}).get("phase") == "Running",
            120,
            "phase Running",
            log,
        )
        status, body = _http(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200 and "kubetune_" in body, body[:2000]
    writes = [
        e
        for e in cp.audit(since=mark, user=rc.OPERATOR_USER)
        if e["verb"] in ("create", "patch", "update") and e.get("objectRef", {}).get("namespace") == ns
    ]
    assert {e["objectRef"]["resource"] for e in writes} >= {"jobs", "configmaps", "finetunejobs"}, writes
    await asyncio.to_thread(cp.delete_namespace, ns)


@contextlib.asynccontextmanager
async def operator_container(
    images: im.BuiltImages, cp: Any, ns: str, tmp_path: Path
) -> AsyncIterator[tuple[Path, int]]:
    """The operator image run as the chart's Deployment pod (watching ``ns``), logged in like a pod: the
    ServiceAccount token, CA and namespace where the kubelet projects them, KUBERNETES_SERVICE_* in the env.
    Ready once /healthz answers (the chart's probe); yields the log file and the metrics port; stopped with
    SIGTERM at the end, which must end it cleanly."""
    from tests.harness import realcluster as rc
    from tests.servers import free_port

    metrics, health = free_port(), free_port()
    values = {
        "watch": {"allNamespaces": False, "namespaces": [ns]},
        "operator": {"metricsPort": metrics, "healthPort": health, "syncInterval": 1},
        "image": {"repository": "localhost/kubetune-operator", "tag": "dev"},
        "trainer": {"image": {"repository": "localhost/kubetune-trainer", "tag": "dev"}, "metricsPort": free_port()},
    }
    pod = await asyncio.to_thread(chart_operator_pod, values)
    container = pod["spec"]["containers"][0]
    assert container["image"] == images.operator
    assert f"--namespace={ns}" in container["args"] and f"--trainer-image={images.trainer}" in container["args"]
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(cp.operator_token)
    (sa / "namespace").write_text(rc.OPERATOR_NS)
    shutil.copy(cp.ca_file, sa / "ca.crt")
    for f in sa.iterdir():
        f.chmod(0o644)
    assert pod["spec"]["serviceAccountName"] == rc.OPERATOR_SA and pod["spec"]["automountServiceAccountToken"]
    ctr, _ = im.pod_container(
        pod,
        images.operator,
        tmp_path / "operator-pod",
        {}.__getitem__,
        {}.__getitem__,
        extra_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(cp.apiserver_port)},
    )
    ctr.mounts.append(im.Mount("/var/run/secrets/kubernetes.io/serviceaccount", sa, read_only=True))
    assert ctr.read_only_root and ctr.user == "10001:10001", "the chart's securityContext"
    assert ctr.command[:2] == ["kubetune", "operator"] and "KUBECONFIG" not in ctr.env
    log = tmp_path / "operator.log"
    with ctr:
        proc = await asyncio.to_thread(ctr.popen, log)
        try:
            await _wait(lambda: _http(f"http://127.0.0.1:{health}/healthz")[0] == 200, 120, "/healthz", log, proc)
            yield log, metrics
        finally:
            code = im.Container.stop(proc)
        assert code in (0, -15, 143), f"exit {code}\n{log.read_text()[-3000:]}"


async def _operator_against_the_emulator(
    images: im.BuiltImages, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Without the control plane's binaries: the same container against the emulator (kubeconfig mounted)."""
    from tests.harness.cluster import ClusterSimulator
    from tests.harness.emulator import FTJ
    from tests.harness.fixtures import emulated_api
    from tests.servers import free_port

    monkeypatch = request.getfixturevalue("monkeypatch")
    metrics, health = free_port(), free_port()
    # the chart's default --all-namespaces (the emulator does not serve kopf's namespace observer; it is this
    # test's own API, so nothing else is watched)
    values = {
        "operator": {"metricsPort": metrics, "healthPort": health, "syncInterval": 1},
        "image": {"repository": "localhost/kubetune-operator", "tag": "dev"},
        "trainer": {"image": {"repository": "localhost/kubetune-trainer", "tag": "dev"}},
    }
    pod = await asyncio.to_thread(chart_operator_pod, values)
    async with emulated_api(tmp_path, monkeypatch) as api, ClusterSimulator(api):
        kubeconfig = Path(os.environ["KUBECONFIG"])
        kubeconfig.chmod(0o644)
        ctr, _ = im.pod_container(
            pod,
            images.operator,
            tmp_path / "pod",
            {}.__getitem__,
            {}.__getitem__,
            extra_env={"KUBECONFIG": "/var/run/kubetune/kubeconfig"},
        )
        ctr.mounts.append(im.Mount("/var/run/kubetune/kubeconfig", kubeconfig, read_only=True))
        log = tmp_path / "operator.log"
        with ctr:
            proc = await asyncio.to_thread(ctr.popen, log)
            try:
                await _wait(lambda: _http(f"http://127.0.0.1:{health}/healthz")[0] == 200, 120, "/healthz", log, proc)
                api.create(
                    FTJ,
                    {
                        "apiVersion": "kubetune.io/v1alpha1",
                        "kind": "FineTuneJob",
                        "metadata": {"name": "imaged", "namespace": "default"},
                        "spec": {
                            "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                            "datasets": [{"name": "identity", "source": "s3://data/identity.json"}],
                            "resources": {"nodes": 1, "gpusPerNode": 1},
                            "output": {"uri": "s3://out/imaged"},
                        },
                    },
                )
                job = await _wait(lambda: api.get("batch/v1/jobs", "default", "imaged"), 90, "the Job", log)
                assert job["spec"]["template"]["spec"]["containers"][0]["image"] == images.trainer
                await _wait(
                    lambda: (api.get(FTJ, "default", "imaged") or {}).get("status", {}).get("phase") == "Running",
                    120,
                    "phase Running",
                    log,
                )
            finally:
                im.Container.stop(proc)


# ------------------------------------------------------------------------------------------ end to end


async def test_kubectl_apply_to_succeeded_with_both_images(
    images: im.BuiltImages,
    tiny_model_dir: Path,
    tmp_path: Path,
    node_s3: tuple[str, str, dict[str, str]],
    request: pytest.FixtureRequest,
) -> None:
    """The whole path with nothing emulated but the node: ``kubectl apply -f`` of a FineTuneJob on the real
    control plane; the operator image (as the chart's pod) makes the Job; the real Job controller makes the
    pod and the real scheduler binds it to a node whose kubelet runs it from the trainer image (uid 1000, the
    Job's env, Secret and volumes); the pod's exit and termination message go back to the
    API; the operator reads them and the FineTuneJob ends Succeeded with a verified adapter in S3."""
    from tests.harness import realcluster as rc
    from tests.harness.processkubelet import ProcessKubelet

    rc.controlplane_or_skip()
    cp: rc.ControlPlane = request.getfixturevalue("control_plane")
    _, bucket, creds = node_s3
    model, data = upload_inputs(creds, bucket, tiny_model_dir)
    uri = f"s3://{bucket}/runs/e2e"
    ns = await asyncio.to_thread(cp.create_namespace, rc.namespace_name(request.node.name))
    k8s = rc.K8s(cp, ns)
    cp.api.create(
        "v1/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"}, "stringData": creds},
        ns,
    )
    spec = tiny_lora_spec(model, data, uri, "s3-credentials")
    spec["resources"].update({"nodeSelector": ProcessKubelet.NODE_SELECTOR, "tolerations": ProcessKubelet.TOLERATIONS})
    manifest = tmp_path / "finetunejob.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "e2e"}, "spec": spec},
            sort_keys=False,
        )
    )
    kubelet_cls = im.image_kubelet_class()
    # the root is as the pod asks (the Job sets no readOnlyRootFilesystem: see test_job_pods_can_run_with_a_read_only_root)
    with kubelet_cls(cp.api, tmp_path / "node", node=f"img-{uuid.uuid4().hex[:6]}", pod_ip=node_ip()) as kubelet:
        async with operator_container(images, cp, ns, tmp_path) as (log, _):
            out = await k8s.kubectl("apply", "-f", str(manifest))
            assert "finetunejob.kubetune.io/e2e created" in out, out

            def phase() -> str | None:
                return (cp.api.get(rc.FTJ, ns, "e2e") or {}).get("status", {}).get("phase")

            try:
                await _wait(lambda: phase() in ("Succeeded", "Failed"), 1200, "a final phase", log)
            finally:
                for path in kubelet.logs.values():
                    print(f"--- {path} ---\n{path.read_text(errors='replace')[-4000:] if path.exists() else ''}")
                print(f"--- kubelet errors: {kubelet.errors}")
            status = cp.api.get(rc.FTJ, ns, "e2e")["status"]
            assert status["phase"] == "Succeeded", status
        pods = k8s.pods("e2e")
        assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == kubelet.node, "bound by the real scheduler"
        assert pods[0]["spec"]["containers"][0]["image"] == images.trainer
        terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 0 and terminated["message"].startswith("succeeded"), terminated
        job = cp.api.get("batch/v1/jobs", ns, "e2e")
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"]), job[
            "status"
        ]
    assert status["artifacts"]["adapterUri"] == uri, status
    verified = verify_artifact(uri, creds)
    assert verified.returncode == 0, verified.stderr
    await asyncio.to_thread(cp.delete_namespace, ns)
