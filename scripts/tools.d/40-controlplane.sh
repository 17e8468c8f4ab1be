#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, built from upstream Go modules through the Go module proxy:
# kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes), etcd (the version that
# Kubernetes release requires), kwok (fake GPU nodes), Kueue's controller and a kstatus probe
# (sigs.k8s.io/cli-utils). Built once per machine into a cache keyed by the versions below; a warm run
# only checks that every binary is there. Usage: 40-controlplane.sh TOOLS_DIR
# (links TOOLS_DIR/controlplane -> the cache).
set -euo pipefail
TOOLS="${1:-.tools}"
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
K8S=v1.37.2
STAGING="v0.${K8S#v1.}"
KWOK=v0.8.0
KUEUE=v0.17.0
CLI_UTILS=v0.37.2
# the cache key names the upstream versions only: editing the small kstatus probe rebuilds the probe alone
KEY="k8s-$K8S-kwok-$KWOK-kueue-$KUEUE"
PROBE="cliutils-$CLI_UTILS-$(sha1sum "$HERE/tests/controlplane/kstatus/main.go" | cut -c1-8)"
CACHE="${KUBETUNE_TOOLS_CACHE:-$HOME/.cache/kubetune}/controlplane/$KEY"
BIN="$CACHE/bin"
WANT=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kueue)
# Kueue's CRDs and admission/conversion webhook manifests ship inside its module; the test fixture
# (tests/harness/realkueue.py) points them at the kueue process on 127.0.0.1.
kueue_manifests() {
  local kdir
  kdir="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kueue@$KUEUE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$CACHE/kueue-crds" && mkdir -p "$CACHE/kueue-crds"
  cp "$kdir"/config/components/crd/bases/*.yaml "$CACHE/kueue-crds/"
  cp "$kdir"/config/components/webhook/manifests.yaml "$CACHE/kueue-crds/webhooks.yaml"
  chmod -R u+w "$CACHE/kueue-crds"
}
# 3. The kstatus probe: Flux's health computation (sigs.k8s.io/cli-utils/pkg/kstatus) as a tiny program,
#    rebuilt when its source or the cli-utils version changes (stamp: $BIN/kstatus.version).
kstatus_probe() {
  [ -x "$BIN/kstatus" ] && [ "$(cat "$BIN/kstatus.version" 2>/dev/null)" = "$PROBE" ] && return 0
  mkdir -p "$CACHE/src/kstatus" "$BIN"
  cp "$HERE/tests/controlplane/kstatus/main.go" "$CACHE/src/kstatus/main.go"
  (cd "$CACHE/src/kstatus" &&
    printf 'module kubetune.test/kstatus\n\ngo 1.26\n\nrequire sigs.k8s.io/cli-utils %s\n' "$CLI_UTILS" > go.mod &&
    GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/kstatus" .)
  echo "$PROBE" > "$BIN/kstatus.version"
}
ok=1
for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || ok=0; done
mkdir -p "$TOOLS"
if [ "$ok" = 1 ]; then
  [ -f "$CACHE/kueue-crds/webhooks.yaml" ] || kueue_manifests
  kstatus_probe
  ln -sfn "$CACHE" "$TOOLS/controlplane"
  exit 0
fi
command -v go >/dev/null || { echo "go is missing: the control plane is built from Go modules (Go >= 1.26)" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
start=$(date +%s)
mkdir -p "$BIN" "$CACHE/src"
work="$CACHE/src"

# 1. k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces every staging module with a local
#    path): a wrapper module requires it and replaces each staging module with its published v0.37.x.
#    The replace list is generated from that release's own go.mod, never copied by hand.
gomod="$(go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
godebug="$(grep -m1 '^godebug' "$gomod" || true)"
etcd="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2}' "$gomod")"
mkdir -p "$work/k8s"
{
  echo "module kubetune.test/controlplane"
  echo
  echo "go 1.26"
  [ -n "$godebug" ] && echo "$godebug"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $K8S"
  echo "	go.etcd.io/etcd/server/v3 $etcd"
  echo ")"
  echo
  echo "replace ("
  sed -n '/^replace (/,/^)/p' "$gomod" | awk '$2=="=>" && $3 ~ /^\.\/staging/ {print "\t" $1 " => " $1 " '"$STAGING"'"}'
  echo ")"
} > "$work/k8s/go.mod"
cat > "$work/k8s/tools.go" <<'GO'
//go:build tools

package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
cd "$work/k8s"
go mod download
ver="-X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1"
ver="$ver -X k8s.io/component-base/version.gitMinor=$(echo "$K8S" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=$K8S"
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  [ -x "$BIN/$cmd" ] || go build -trimpath -ldflags "-s -w $ver" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
[ -x "$BIN/etcd" ] || go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3

# 2. kwok and Kueue have no replace directives: plain `go install` at a pinned version.
[ -x "$BIN/kwok" ] || GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK"
if [ ! -x "$BIN/kueue" ]; then
  GOBIN="$work/kueue-bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE"
  mv "$work/kueue-bin/kueue" "$BIN/kueue"
fi
kueue_manifests

kstatus_probe

"$BIN/kube-apiserver" --version
"$BIN/etcd" --version | head -1
echo "control plane built in $(( $(date +%s) - start )) s -> $CACHE"
ln -sfn "$CACHE" "$HERE/$TOOLS/controlplane" 2>/dev/null || ln -sfn "$CACHE" "$TOOLS/controlplane"
