#!/usr/bin/env bash
# Build the bids_spheres container image from the Dockerfile at the repository root.
#
# Usage: scripts/build-image.sh [options]
#
#   --tag NAME               image name (default bids_spheres/bids_spheres:<pyproject version>)
#   --engine docker|buildah  default: docker when `docker info` answers, else buildah
#   --base IMAGE             BASE_IMAGE build argument (default: the Dockerfile's python:3.11-slim)
#   --debian-base            no registry needed for the base: debootstrap Debian bookworm with
#                            python3 + python3-venv from the Debian mirror, import it as
#                            localhost/bids_spheres-base:bookworm and build FROM it
#                            (root, debootstrap; implies --base)
#   --no-templates           TEMPLATEFLOW_FETCH=0: do not download TemplateFlow templates
#   --templateflow-home DIR  TEMPLATEFLOW_FETCH=0, then add DIR (a TemplateFlow home with
#                            tpl-*/ folders) as /opt/templateflow in a last layer
#   --ca-bundle FILE         buildah only: bind-mount FILE over the base's
#                            /etc/ssl/certs/ca-certificates.crt during RUN steps (pip behind a
#                            TLS-intercepting proxy); nothing of it is left in the image
#   --save FILE.tar          also write the image as a docker-archive (for
#                            `apptainer build x.sif docker-archive://FILE.tar`)
#   --write-lock             only rewrite requirements.lock: pin the versions installed in the
#                            current Python (${PYTHON:-python3}) of the runtime dependency closure
#                            (pyproject.toml dependencies + templateflow), keeping its build-tool
#                            pins; run it where the test suite passes, then review the diff
#   -h, --help
#
# Needs: bash, and either a Docker engine (docker CLI + daemon) or buildah (Debian/Ubuntu
# package `buildah`; run as root, or rootless with /etc/subuid and /etc/subgid entries and
# fuse-overlayfs). Network: the base image's registry (not with --debian-base, which needs the
# Debian mirror instead), PyPI for the locked packages and, unless --no-templates or
# --templateflow-home, TemplateFlow's S3 bucket. buildah is run with BUILDAH_ISOLATION=chroot
# (works inside containers and sandboxes without user namespaces); set BUILDAH_ISOLATION=oci
# to use a runtime, and STORAGE_DRIVER=vfs where overlay mounts are refused.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "build-image.sh: $*" >&2
    exit 1
}

write_lock() {
    "${PYTHON:-python3}" - <<'PY'
import re
from importlib.metadata import distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

text = Path("pyproject.toml").read_text(encoding="utf-8")
deps = re.search(r"^dependencies = \[(.*?)\]", text, flags=re.M | re.S).group(1)
roots = [Requirement(r) for r in re.findall(r'"([^"]+)"', deps)] + [Requirement("templateflow")]
env = default_environment()
seen: dict[str, tuple[str, str]] = {}
todo = [(r.name, frozenset(r.extras)) for r in roots]
extras_of: dict[str, frozenset] = {}
while todo:
    name, extras = todo.pop()
    key = canonicalize_name(name)
    if key in extras_of and extras <= extras_of[key]:
        continue
    extras_of[key] = extras_of.get(key, frozenset()) | extras
    dist = distribution(name)
    seen[key] = (dist.metadata["Name"], dist.version)
    for line in dist.requires or []:
        req = Requirement(line)
        wanted = [""] + sorted(extras_of[key])
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
            todo.append((req.name, frozenset(req.extras)))
lock = Path("requirements.lock")
old = lock.read_text(encoding="utf-8").splitlines()
header = [line for line in old[: next(i for i, l in enumerate(old) if not l.startswith("#"))]]
tools = old[next(i for i, l in enumerate(old) if l.startswith("# build tools")) - 1 :]
pins = [f"{n}=={v}" for n, v in (seen[k] for k in sorted(seen))]
lock.write_text("\n".join([*header, *pins, *tools]) + "\n", encoding="utf-8")
print(f"requirements.lock: {len(pins)} runtime pins")
PY
}

VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
[ -n "$VERSION" ] || die "no version in pyproject.toml"
TAG="bids_spheres/bids_spheres:${VERSION}"
ENGINE=""
BASE=""
DEBIAN_BASE=0
FETCH=1
TF_HOME=""
SAVE=""
CA_BUNDLE=""

while [ $# -gt 0 ]; do
    case "$1" in
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    --engine) ENGINE=${2:?--engine needs docker or buildah}; shift 2 ;;
    --base) BASE=${2:?--base needs an image}; shift 2 ;;
    --debian-base) DEBIAN_BASE=1; shift ;;
    --no-templates) FETCH=0; shift ;;
    --templateflow-home) TF_HOME=${2:?--templateflow-home needs a directory}; FETCH=0; shift 2 ;;
    --ca-bundle) CA_BUNDLE=${2:?--ca-bundle needs a file}; shift 2 ;;
    --write-lock) write_lock; exit 0 ;;
    --save) SAVE=${2:?--save needs a file name}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -z "$ENGINE" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        ENGINE=docker
    elif command -v buildah >/dev/null; then
        ENGINE=buildah
    else
        die "neither a Docker daemon (docker info failed) nor buildah (apt-get install buildah)"
    fi
fi
case "$ENGINE" in
docker | buildah) command -v "$ENGINE" >/dev/null || die "$ENGINE is not installed" ;;
*) die "--engine must be docker or buildah, not $ENGINE" ;;
esac
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
if [ -n "$CA_BUNDLE" ]; then
    [ "$ENGINE" = buildah ] || die "--ca-bundle works with buildah only"
    [ -f "$CA_BUNDLE" ] || die "--ca-bundle $CA_BUNDLE is not a file"
    CA_BUNDLE=$(cd "$(dirname "$CA_BUNDLE")" && pwd)/$(basename "$CA_BUNDLE")
fi
[ -z "$TF_HOME" ] || [ -d "$TF_HOME" ] || die "--templateflow-home $TF_HOME is not a directory"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# build IMAGE-TAG DOCKERFILE CONTEXT [build args...]
build() {
    local tag=$1 dockerfile=$2 context=$3
    shift 3
    if [ "$ENGINE" = docker ]; then
        docker build --pull=false -t "$tag" -f "$dockerfile" "$@" "$context"
    else
        local mounts=()
        [ -z "$CA_BUNDLE" ] || mounts=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
        buildah bud --layers --format docker --network host "${mounts[@]}" -t "$tag" \
            -f "$dockerfile" "$@" "$context"
    fi
}

if [ "$DEBIAN_BASE" = 1 ]; then
    command -v debootstrap >/dev/null || die "--debian-base needs debootstrap (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "--debian-base needs root (debootstrap)"
    BASE=localhost/bids_spheres-base:bookworm
    echo "build-image.sh: debootstrap Debian bookworm (python3, python3-venv) -> $BASE"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    chroot "$WORK/rootfs" apt-get clean
    rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/*.bin
    if [ "$ENGINE" = docker ]; then
        tar -C "$WORK/rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$BASE"
    else
        ctr=$(buildah from scratch)
        buildah copy "$ctr" "$WORK/rootfs" / >/dev/null
        buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
        buildah commit --rm "$ctr" "$BASE" >/dev/null
    fi
    rm -rf "$WORK/rootfs"
fi

ARGS=(--build-arg "VERSION=$VERSION" --build-arg "TEMPLATEFLOW_FETCH=$FETCH")
[ -z "$BASE" ] || ARGS+=(--build-arg "BASE_IMAGE=$BASE")
echo "build-image.sh: $ENGINE, $TAG, base ${BASE:-python:3.11-slim}, TEMPLATEFLOW_FETCH=$FETCH"
build "$TAG" Dockerfile . "${ARGS[@]}"

if [ -n "$TF_HOME" ]; then
    echo "build-image.sh: adding $TF_HOME as /opt/templateflow"
    mkdir -p "$WORK/tf/templateflow"
    cp -a "$TF_HOME"/. "$WORK/tf/templateflow/"
    chmod -R a+rX "$WORK/tf/templateflow"
    printf 'FROM %s\nCOPY templateflow/ /opt/templateflow/\n' "$TAG" >"$WORK/tf/Dockerfile"
    build "$TAG" "$WORK/tf/Dockerfile" "$WORK/tf"
fi

if [ -n "$SAVE" ]; then
    if [ "$ENGINE" = docker ]; then
        docker save -o "$SAVE" "$TAG"
    else
        rm -f "$SAVE"
        buildah push "$TAG" "docker-archive:$SAVE:$TAG"
    fi
    echo "build-image.sh: saved $SAVE"
fi
echo "build-image.sh: built $TAG"
