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
#   --no-templates           TEMPLATEFLOW_FETCH=0: do not download TemplateFlow templates;
#                            the image is tagged <tag>-notemplates (never the release tag)
#   --templateflow-home DIR  TEMPLATEFLOW_FETCH=0, then add DIR (a TemplateFlow home with
#                            tpl-*/ folders) as /opt/templateflow in a last layer, after
#                            checking its templates against scripts/image/templates.sha256
#   --record-template-sums DIR  only rewrite scripts/image/templates.sha256 with the sha256
#                            of the templates in DIR (a TemplateFlow home you trust)
#   --ca-bundle FILE         buildah only: bind-mount FILE over the base's
#                            /etc/ssl/certs/ca-certificates.crt during RUN steps (pip behind a
#                            TLS-intercepting proxy); nothing of it is left in the image
#   --save FILE.tar          also write the image as a docker-archive (for
#                            `apptainer build x.sif docker-archive://FILE.tar`)
#   --write-lock             only rewrite requirements.lock: pin the versions installed in the
#                            current Python (${PYTHON:-python3}) of the runtime dependency closure
#                            (pyproject.toml dependencies + templateflow + distributed), keeping
#                            its build-tool pins, each with the sha256 of every file of that
#                            release on PyPI (PIP_INDEX_URL, default https://pypi.org/simple);
#                            run it where the test suite passes, then review the diff
#   -h, --help
#
# Needs: bash, and either a Docker engine (docker CLI + daemon) or buildah (Debian/Ubuntu
# package `buildah`; run as root, or rootless with /etc/subuid and /etc/subgid entries and
# fuse-overlayfs). Network: the base image's registry (not with --debian-base, which needs the
# Debian mirror instead), PyPI for the locked packages and, unless --no-templates or
# --templateflow-home, TemplateFlow's S3 bucket. The image gets the OCI labels created (now,
# or SOURCE_DATE_EPOCH) and revision (git rev-parse HEAD, +dirty with local changes), and
# BIDS_SPHERES_CONTAINER_TAG=<tag>. The script prints the image's size when done. buildah is run with BUILDAH_ISOLATION=chroot
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
"""requirements.lock: the runtime closure pinned as installed here, with PyPI's sha256 of
every file of each pinned release (as pip-compile --generate-hashes writes them), so that
`pip install --require-hashes` accepts the wheel of any platform and nothing else."""
import json
import os
import re
import urllib.request
from importlib.metadata import distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
text = Path("pyproject.toml").read_text(encoding="utf-8")


def toml_list(key):
    body = re.search(rf"^{re.escape(key)} = \[(.*?)\]", text, flags=re.M | re.S).group(1)
    return [Requirement(r) for r in re.findall(r'"([^"]+)"', body)]


# the package's dependencies, the templateflow extra (the image's templates) and the dask
# extra (distributed, for --dask-scheduler)
roots = toml_list("dependencies") + toml_list("templateflow") + toml_list("dask")
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


def hashes(name, version):
    """sha256 of every file of name==version on PyPI's simple index (PEP 691 JSON)."""
    request = urllib.request.Request(
        f"{INDEX}/{canonicalize_name(name)}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        files = json.load(reply)["files"]
    found = set()
    for item in files:
        filename = item["filename"]
        try:
            if filename.endswith(".whl"):
                got = parse_wheel_filename(filename)[1]
            else:
                got = parse_sdist_filename(filename)[1]
        except (InvalidSdistFilename, InvalidWheelFilename):  # eggs, exe installers
            continue
        if got == Version(version) and "sha256" in item["hashes"]:
            found.add(item["hashes"]["sha256"])
    if not found:
        raise SystemExit(f"write-lock: {INDEX} lists no files for {name}=={version}")
    return sorted(found)


def entry(name, version):
    lines = [f"{name}=={version}"] + [f"    --hash=sha256:{h}" for h in hashes(name, version)]
    return " \\\n".join(lines)


lock = Path("requirements.lock")
old = lock.read_text(encoding="utf-8").splitlines()
header = old[: next(i for i, line in enumerate(old) if not line.startswith("#"))]
start = next(i for i, line in enumerate(old) if line.startswith("# build tools"))
tools = [
    re.match(r"([A-Za-z0-9._-]+)==([^ \\]+)", line).groups()
    for line in old[start:]
    if re.match(r"[A-Za-z0-9]", line)
]
pins = [entry(n, v) for n, v in (seen[k] for k in sorted(seen))]
body = [*header, *pins, "", *old[start : start + 1], *(entry(n, v) for n, v in tools)]
lock.write_text("\n".join(body) + "\n", encoding="utf-8")
print(f"requirements.lock: {len(pins)} runtime pins, {len(tools)} build tools, with hashes")
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
    --record-template-sums)
        [ -d "${2:-}" ] || die "--record-template-sums needs a TemplateFlow home directory"
        "${PYTHON:-python3}" scripts/image/templates.py record "$2" scripts/image/templates.sha256
        echo "build-image.sh: recorded the sha256 of the templates in $2"
        exit 0 ;;
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
if [ -n "$TF_HOME" ]; then
    "${PYTHON:-python3}" scripts/image/templates.py verify "$TF_HOME" scripts/image/templates.sha256 \
        || die "--templateflow-home $TF_HOME does not hold the templates of templates.sha256"
fi
# An image without templates never carries the release tag.
if [ "$FETCH" = 0 ] && [ -z "$TF_HOME" ]; then
    TAG="${TAG}-notemplates"
fi
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
else
    CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
fi
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    REVISION="${REVISION}+dirty"
fi

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
    # as Debian's slim images: no documentation (but the copyright files), manual pages or
    # translations, now or later
    find "$WORK/rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$WORK/rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$WORK"/rootfs/usr/share/man/* "$WORK"/rootfs/usr/share/info/* \
        "$WORK"/rootfs/usr/share/locale/*
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' >"$WORK/rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
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

ARGS=(--build-arg "VERSION=$VERSION" --build-arg "TEMPLATEFLOW_FETCH=$FETCH"
    --build-arg "CREATED=$CREATED" --build-arg "REVISION=$REVISION"
    --build-arg "CONTAINER_TAG=$TAG")
[ -z "$BASE" ] || ARGS+=(--build-arg "BASE_IMAGE=$BASE")
echo "build-image.sh: $ENGINE, $TAG, base ${BASE:-python:3.11-slim}, TEMPLATEFLOW_FETCH=$FETCH"
build "$TAG" Dockerfile . "${ARGS[@]}"

if [ -n "$TF_HOME" ]; then
    echo "build-image.sh: adding $TF_HOME as /opt/templateflow"
    mkdir -p "$WORK/tf/templateflow"
    cp -a "$TF_HOME"/. "$WORK/tf/templateflow/"
    chmod -R a+rX "$WORK/tf/templateflow"
    printf 'FROM %s\nLABEL org.bids_spheres.templateflow-fetch="local, sha256 checked"\nCOPY templateflow/ /opt/templateflow/\n' \
        "$TAG" >"$WORK/tf/Dockerfile"
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
if [ "$ENGINE" = docker ]; then
    SIZE="$(($(docker image inspect --format '{{.Size}}' "$TAG") / 1000000)) MB"
else
    SIZE=$(buildah images --noheading --format '{{.Size}}' "$TAG" | head -n 1)
fi
echo "build-image.sh: built $TAG, size $SIZE (uncompressed)"
