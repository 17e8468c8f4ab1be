#!/usr/bin/env bash
# The two images of this repository's Dockerfile, built for real without a registry or a Docker engine:
# `kubetune-operator:dev` and `kubetune-trainer:dev` (the CPU variant). Usage: 50-images.sh TOOLS_DIR
#
# - buildah (Debian package, `--isolation chroot`, as root) builds them; where a Docker engine answers and
#   buildah is absent, `docker build` does (same build args; the tests need buildah).
# - No image registry is reachable, so every FROM names a local image: debootstrap makes a minimal Debian
#   bookworm once per machine (a tarball under ~/.cache/kubetune/images/, keyed by the suite and the package
#   lists below), imported with buildah as three stand-ins: PYTHON_IMAGE (python3 + pip), CUDA_RUNTIME_IMAGE
#   (the bare base) and CUDA_DEVEL_IMAGE (plus python3-venv, python3-dev and a compiler). Each carries the
#   machine's CA bundle, so pip inside a build trusts what pip outside trusts.
# - The CPU variant passes torch from PyPI (its CUDA build runs on CPU) and no prebuilt DeepSpeed ops.
# - Image storage lives in ~/.cache/kubetune/images/storage (overlay where the kernel mounts it, else vfs);
#   pip's cache mount lives there too, so a rebuild downloads nothing. A build is skipped when the tag's image
#   was built from the same hash of Dockerfile, .dockerignore, pyproject.toml, README.md, operator/, trainer/,
#   bases and build args; a changed source rebuilds only the layers after the dependency layers.
# - $TOOLS/bin/kt-buildah runs buildah on that storage (the tests use it); $TOOLS/images.env names the images.
# Environment: KUBETUNE_IMAGES=0 skips this step; KUBETUNE_IMAGES_DRIVER=vfs|overlay forces a storage driver.
set -euo pipefail
TOOLS="${1:-.tools}"
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
[ "${KUBETUNE_IMAGES:-1}" = 0 ] && exit 0
mkdir -p "$TOOLS/bin"
TOOLS="$(cd "$TOOLS" && pwd)"

SUITE=bookworm
BASE_PACKAGES="ca-certificates"
PYTHON_PACKAGES="python3 python3-venv python3-pip python-is-python3"
DEVEL_PACKAGES="python3 python3-venv python3-dev build-essential"
BASE_KEY="$SUITE-$(printf '%s|%s|%s|2' "$BASE_PACKAGES" "$PYTHON_PACKAGES" "$DEVEL_PACKAGES" | sha1sum | cut -c1-10)"
CACHE="${KUBETUNE_TOOLS_CACHE:-$HOME/.cache/kubetune}/images"
STORE="$CACHE/storage"
RUNROOT="/run/kubetune-images"
log() { echo "[images] $*" >&2; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# ------------------------------------------------------------------------------------------ tools
if ! command -v buildah >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  if ! command -v buildah >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    log "no buildah; building with the Docker engine"
    ENGINE=docker
  else
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends buildah debootstrap
  fi
fi
ENGINE="${ENGINE:-buildah}"

# ------------------------------------------------------------------------------------------ storage
mkdir -p "$STORE" "$CACHE/tmp" "$CACHE/built"
# One build at a time per machine (`make images` and a test session may both ask).
exec 9>"$CACHE/lock"
flock 9
if [ -n "${KUBETUNE_IMAGES_DRIVER:-}" ]; then
  DRIVER="$KUBETUNE_IMAGES_DRIVER"
elif [ -d "$STORE/overlay-images" ]; then
  DRIVER=overlay
elif [ -d "$STORE/vfs-images" ]; then
  DRIVER=vfs
else
  # overlay keeps each layer as a diff; vfs copies the whole tree per layer (several GB per trainer layer).
  probe="$(mktemp -d "$CACHE/tmp/probe.XXXXXX")"
  mkdir -p "$probe"/{l,u,w,m}
  if $SUDO mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
    $SUDO umount "$probe/m"
    DRIVER=overlay
  else
    DRIVER=vfs
  fi
  rm -rf "$probe"
fi
cat >"$TOOLS/bin/kt-buildah" <<EOF
#!/bin/sh
# buildah on kubetune's image storage (written by scripts/tools.d/50-images.sh).
TMPDIR="$CACHE/tmp" exec $SUDO buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver "$DRIVER" "\$@"
EOF
chmod +x "$TOOLS/bin/kt-buildah"
B="$TOOLS/bin/kt-buildah"

image_id() { "$B" inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
# Working containers a failed build left behind (a test's own containers are named kt-run-*).
remove_stale_containers() {
  local ctr
  for ctr in $("$B" containers --noheading --format '{{.ContainerName}}' 2>/dev/null | grep -v '^kt-run-' || true); do
    "$B" rm "$ctr" >/dev/null 2>&1 || true
  done
}

# ------------------------------------------------------------------------------------------ bases
PYTHON_BASE="localhost/kubetune-base/python:$BASE_KEY"
RUNTIME_BASE="localhost/kubetune-base/runtime:$BASE_KEY"
DEVEL_BASE="localhost/kubetune-base/devel:$BASE_KEY"

# A container from IMAGE, PACKAGES installed with apt, the CA bundle and pip's trust in it, committed as TAG.
derive() {
  local from="$1" tag="$2" packages="$3" ctr
  ctr="$("$B" from --pull-never "$from")"
  if [ -n "$packages" ]; then
    # shellcheck disable=SC2086
    "$B" run --isolation chroot --network host "$ctr" -- sh -c \
      "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends $packages \
       && rm -rf /var/lib/apt/lists/* && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED" >&2
  fi
  # The Debian bundle plus the machine's (package traffic may go through a proxy whose CA only the machine
  # has), kept where update-ca-certificates keeps it when a later apt step regenerates the bundle.
  local mnt
  mnt="$("$B" mount "$ctr")"
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$mnt/usr/local/share/ca-certificates/kubetune-machine.crt"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  "$B" umount "$ctr" >/dev/null
  "$B" config --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --cmd /bin/bash "$ctr"
  "$B" commit --rm --quiet "$ctr" "$tag" >/dev/null
}

make_bases() {
  local tarball="$CACHE/bases/$BASE_KEY/rootfs.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing"; exit 1; }
    local mirror rootfs
    mirror="$(grep -h -m1 -o -E 'https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d "$CACHE/tmp/rootfs.XXXXXX")"
    log "debootstrap $SUITE from $mirror (once per machine)"
    $SUDO nice -n 5 debootstrap --variant=minbase --include="${BASE_PACKAGES// /,}" "$SUITE" "$rootfs" "$mirror" >&2
    $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$(dirname "$tarball")"
    $SUDO tar -C "$rootfs" --numeric-owner -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    $SUDO rm -rf "$rootfs"
  fi
  local scratch mnt
  scratch="$("$B" from scratch)"
  mnt="$("$B" mount "$scratch")"
  $SUDO tar -C "$mnt" --numeric-owner -xf "$tarball"
  "$B" umount "$scratch" >/dev/null
  "$B" commit --rm --quiet "$scratch" "localhost/kubetune-base/debootstrap:$BASE_KEY" >/dev/null
  derive "localhost/kubetune-base/debootstrap:$BASE_KEY" "$RUNTIME_BASE" ""
  derive "$RUNTIME_BASE" "$PYTHON_BASE" "$PYTHON_PACKAGES"
  derive "$RUNTIME_BASE" "$DEVEL_BASE" "$DEVEL_PACKAGES"
}

if [ "$ENGINE" = buildah ]; then
  remove_stale_containers
  if [ -z "$(image_id "$PYTHON_BASE")" ] || [ -z "$(image_id "$RUNTIME_BASE")" ] || [ -z "$(image_id "$DEVEL_BASE")" ]; then
    start=$(date +%s)
    make_bases
    log "bases ready in $(( $(date +%s) - start )) s"
  fi
fi

# ------------------------------------------------------------------------------------------ images
ARGS=(
  --build-arg "PYTHON_IMAGE=$PYTHON_BASE"
  --build-arg "CUDA_DEVEL_IMAGE=$DEVEL_BASE"
  --build-arg "CUDA_RUNTIME_IMAGE=$RUNTIME_BASE"
  --build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
  --build-arg "DS_BUILD_CPU_ADAM=0"
  --build-arg "DS_BUILD_FUSED_ADAM=0"
  --build-arg "DS_BUILD_UTILS=0"
)
# What the images are built from (the files .dockerignore lets in) plus the bases and the arguments.
tree_hash() {
  (
    cd "$HERE"
    printf '%s\n' "${ARGS[@]}" "$(image_id "$PYTHON_BASE")" "$(image_id "$DEVEL_BASE")" "$(image_id "$RUNTIME_BASE")"
    find Dockerfile .dockerignore pyproject.toml README.md operator trainer -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha1sum
  ) | sha1sum | cut -c1-16
}
HASH="$(tree_hash)"
mkdir -p "$CACHE/built"
for target in operator trainer; do
  tag="localhost/kubetune-$target:dev"
  stamp="$CACHE/built/$target-$HASH"
  if [ "$ENGINE" = buildah ] && [ -s "$stamp" ] && [ "$(image_id "$tag")" = "$(cat "$stamp")" ]; then
    log "$tag is up to date ($HASH)"
    continue
  fi
  start=$(date +%s)
  log "building $tag (target $target)"
  if [ "$ENGINE" = buildah ]; then
    log="$CACHE/tmp/bud-$target.log"
    (cd "$HERE" && nice -n 5 "$B" bud --layers --isolation chroot --network host --pull-never --target "$target" \
      "${ARGS[@]}" --label "io.kubetune.build-hash=$HASH" -t "$tag" -f Dockerfile . 2>&1 | tee "$log" >&2)
    # The layer cache this build used or made; what the previous build of this target had and this one no
    # longer uses (layers of superseded sources: several GB per trainer build) is deleted.
    grep -oE '^--> (Using cache )?[0-9a-f]{11,64}$' "$log" | awk '{print substr($NF, 1, 11)}' | sort -u >"$CACHE/built/$target.ids.new"
    if [ -f "$CACHE/built/$target.ids" ]; then
      for old in $(comm -23 "$CACHE/built/$target.ids" "$CACHE/built/$target.ids.new"); do
        "$B" rmi "$old" >/dev/null 2>&1 || true
      done
    fi
    mv "$CACHE/built/$target.ids.new" "$CACHE/built/$target.ids"
    rm -f "$CACHE"/built/"$target"-* 2>/dev/null || true
    image_id "$tag" >"$stamp"
  else
    (cd "$HERE" && nice -n 5 docker build --target "$target" "${ARGS[@]:6}" -t "kubetune-$target:dev" . >&2)
  fi
  log "$tag built in $(( $(date +%s) - start )) s"
done

if [ "$ENGINE" = buildah ]; then
  remove_stale_containers
  {
    echo "KUBETUNE_IMAGES_ENGINE=$ENGINE"
    echo "KUBETUNE_IMAGES_HASH=$HASH"
    echo "KUBETUNE_OPERATOR_IMAGE=localhost/kubetune-operator:dev"
    echo "KUBETUNE_TRAINER_IMAGE=localhost/kubetune-trainer:dev"
    echo "KUBETUNE_IMAGES_DRIVER=$DRIVER"
    echo "KUBETUNE_IMAGES_STORE=$STORE"
  } >"$TOOLS/images.env"
  for ((i = 1; i < ${#ARGS[@]}; i += 2)); do echo "${ARGS[$i]}"; done >"$TOOLS/images.buildargs"
  "$B" images --format '{{.Name}}:{{.Tag}} {{.Size}}' 2>/dev/null | grep -E 'kubetune-(operator|trainer):dev' >&2 || true
  df -h / | tail -n1 | awk '{print "[images] disk: " $4 " free of " $2}' >&2
fi
