# kubetune images, one Dockerfile, two targets:
#
#   docker build --target operator -t ghcr.io/kubetune/kubetune-operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/kubetune/kubetune-trainer:0.1.0  .
#
# operator: slim Python, kopf + kubernetes client, no torch (about 200 MB).
# trainer:  CUDA runtime, torch + transformers/peft/TRL/accelerate + DeepSpeed (CPU-Adam and fused-Adam
#           ops prebuilt in a CUDA devel stage) + bitsandbytes.
# Both run as a non-root user; the Helm chart and the operator's Jobs also enforce it.
#
# Dependencies are installed before the kubetune wheel is copied in, so a source change rebuilds only the
# last layers. Downloaded wheels are kept in a build cache mount (a wheelhouse: `pip download` into it, then
# `pip install --no-index` from it), so a rebuild does not download torch again; a wheelhouse, not pip's HTTP
# cache, because that one keeps nothing behind a proxy that drops the caching headers.
# `make images` builds both targets without a registry (local Debian bases passed as the *_IMAGE args,
# torch from PyPI, no prebuilt CUDA ops): see scripts/tools.d/50-images.sh.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# Prints the project's requirements plus one extra's from pyproject.toml, one per line (argv: path, extra, then
# the names to leave out).
ARG PROJECT_REQUIREMENTS="import re, sys, tomllib; p = tomllib.load(open(sys.argv[1], 'rb'))['project']; reqs = [*p['dependencies'], *p['optional-dependencies'][sys.argv[2]]]; print(*(r for r in reqs if re.match(r'[A-Za-z0-9_.-]+', r)[0].lower() not in {'kubetune', *sys.argv[3:]}), sep=chr(10))"

# ------------------------------------------------------------------------------------------- wheel
# The kubetune wheel, built once for both images (hatchling; see pyproject.toml).
FROM ${PYTHON_IMAGE} AS wheel
ARG KUBETUNE_VERSION=0.1.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && test -f "/dist/kubetune-${KUBETUNE_VERSION}-py3-none-any.whl"

# ------------------------------------------------------------------------------------------- operator
FROM ${PYTHON_IMAGE} AS operator
ARG KUBETUNE_VERSION=0.1.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 kubetune \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/kubetune --create-home \
       --shell /usr/sbin/nologin kubetune
# The requirements, read from pyproject.toml: this layer is reused until they change.
ARG PROJECT_REQUIREMENTS
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=cache,id=kubetune-wheels,target=/var/cache/wheels \
    python -c "${PROJECT_REQUIREMENTS}" /tmp/pyproject.toml operator > /tmp/requirements.txt \
    && pip download --no-cache-dir --dest /var/cache/wheels --find-links /var/cache/wheels --requirement /tmp/requirements.txt \
    && pip install --no-cache-dir --no-index --find-links /var/cache/wheels --requirement /tmp/requirements.txt \
    && rm /tmp/pyproject.toml /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir "/tmp/dist/kubetune-${KUBETUNE_VERSION}-py3-none-any.whl[operator]" \
    && rm -rf /tmp/dist \
    && python -c "import kopf, kubernetes, kubetune.operator" \
    && ! python -c "import torch" 2>/dev/null
USER 10001:10001
WORKDIR /home/kubetune
# 8080: Prometheus /metrics; 8081: kopf liveness /healthz
EXPOSE 8080 8081
ENTRYPOINT ["kubetune", "operator"]

# ------------------------------------------------------------------------------------------- trainer-build
# A CUDA devel image compiles DeepSpeed's ops against the same torch, into a venv the runtime copies.
FROM ${CUDA_DEVEL_IMAGE} AS trainer-build
ARG KUBETUNE_VERSION=0.1.0
ARG TORCH_VERSION=2.13.0
# The CUDA build of torch for the CUDA base. Without a registry the tests pass https://pypi.org/simple
# (PyPI's Linux wheel, whose CUDA build runs on CPU too).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DEEPSPEED_VERSION=0.19.8
ARG NINJA_VERSION=1.13.2
# DeepSpeed ops compiled here against torch (1) or JIT-compiled where first used (0): the fused Adam
# needs nvcc, so a build on a base without the CUDA toolkit passes DS_BUILD_FUSED_ADAM=0 (and the other two
# 0 as well: they compile against CUDA headers when torch is a CUDA build).
ARG DS_BUILD_CPU_ADAM=1
ARG DS_BUILD_FUSED_ADAM=1
ARG DS_BUILD_UTILS=1
# Ampere, Ada, Hopper and Blackwell GPUs.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
# The base image tag is pinned; apt package versions follow Ubuntu's security updates for that release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kubetune
ENV PATH=/opt/kubetune/bin:$PATH
RUN --mount=type=cache,id=kubetune-wheels,target=/var/cache/wheels \
    pip download --no-cache-dir --dest /var/cache/wheels --find-links /var/cache/wheels \
        --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir --no-index --find-links /var/cache/wheels "torch==${TORCH_VERSION}"
# DeepSpeed before the trainer extra (which pins it too, and is installed without it here): installed there
# first, its ops would not be built.
RUN pip install --no-cache-dir "ninja==${NINJA_VERSION}" \
    && DS_BUILD_CPU_ADAM="${DS_BUILD_CPU_ADAM}" DS_BUILD_FUSED_ADAM="${DS_BUILD_FUSED_ADAM}" DS_BUILD_UTILS="${DS_BUILD_UTILS}" \
       pip install --no-cache-dir --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"
# The requirements, read from pyproject.toml: this layer is reused until they change.
ARG PROJECT_REQUIREMENTS
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=cache,id=kubetune-wheels,target=/var/cache/wheels \
    python -c "${PROJECT_REQUIREMENTS}" /tmp/pyproject.toml trainer deepspeed > /tmp/requirements.txt \
    && pip download --no-cache-dir --dest /var/cache/wheels --find-links /var/cache/wheels \
        --requirement /tmp/requirements.txt "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir --no-index --find-links /var/cache/wheels \
        --requirement /tmp/requirements.txt "torch==${TORCH_VERSION}" \
    && rm /tmp/pyproject.toml /tmp/requirements.txt
# The sources last: a change to them rebuilds only the wheel and this layer.
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir "/tmp/dist/kubetune-${KUBETUNE_VERSION}-py3-none-any.whl[trainer]" "torch==${TORCH_VERSION}" \
    && rm -rf /tmp/dist \
    && python -c "import deepspeed, bitsandbytes, peft, trl, kubetune.trainer"

# ------------------------------------------------------------------------------------------- trainer
FROM ${CUDA_RUNTIME_IMAGE} AS trainer
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/kubetune/bin:$PATH \
    HOME=/home/kubetune \
    HF_HUB_DISABLE_TELEMETRY=1
# The same Python the venv was built with (Ubuntu 24.04's python3), and nothing else.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
# The training Jobs run as uid 1000 (the operator's pod securityContext); the image uses the same user.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid 1000 kubetune \
    && useradd --uid 1000 --gid 1000 --home-dir /home/kubetune --create-home --shell /usr/sbin/nologin kubetune
COPY --from=trainer-build /opt/kubetune /opt/kubetune
USER 1000:1000
WORKDIR /home/kubetune
# 9400: the trainer's Prometheus metrics (rank 0); 29500: torch.distributed rendezvous
EXPOSE 9400 29500
ENTRYPOINT ["kubetune-train"]
