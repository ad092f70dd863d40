"""apptainer.def: the Apptainer recipe is the Dockerfile's twin, and the SLURM scripts use it.

Apptainer cannot be installed from Debian packages here, so the definition file is parsed:
its header (``Bootstrap: docker``, the Dockerfile's base pinned by digest), its sections, the
same hashed install of requirements.lock and the same pruning as the Dockerfile (command for
command), the same runtime environment (with ``BIDS_SPHERES_CONTAINER_TYPE=apptainer``), the
same entry point, OCI labels, and a read-only friendly layout (nothing written outside /tmp
and the output).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEF = (ROOT / "apptainer.def").read_text(encoding="utf-8")
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
VERSION = re.search(
    r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), flags=re.M
).group(1)


def _parse(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines:
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            assert current not in sections, f"section %{current} twice"
            sections[current] = []
        elif current is None:
            if line.strip():
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return header, sections


HEADER, SECTIONS = _parse(DEF)


def _body(section: str) -> list[str]:
    """The section's lines, continuation lines joined, blank lines dropped."""
    text = re.sub(r"\\\n\s*", "", "\n".join(SECTIONS[section]))
    return [line.strip() for line in text.splitlines() if line.strip()]


def _arguments() -> dict[str, str]:
    return dict(line.split("=", 1) for line in _body("arguments"))


def _docker_commands() -> list[str]:
    """Every command of the Dockerfile's RUN instructions (``&&``-separated), in order."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", "", "\n".join(lines))
    commands = []
    for line in joined.splitlines():
        if line.startswith("RUN "):
            commands += [c.strip() for c in line[4:].split(" && ")]
    return commands


def test_header_and_sections() -> None:
    assert HEADER == {"Bootstrap": "docker", "From": "{{ BASE_IMAGE }}"}
    assert set(SECTIONS) == {
        "arguments", "files", "post", "environment", "runscript", "test", "labels", "help",
    }  # fmt: skip


def test_same_base_as_the_dockerfile_pinned_by_digest() -> None:
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, flags=re.M).group(1)
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base)
    assert _arguments()["BASE_IMAGE"] == base
    assert _arguments()["VERSION"] == VERSION


def test_files_are_what_the_dockerfile_copies() -> None:
    files = dict(line.split() for line in _body("files"))
    assert files == {
        "requirements.lock": "/tmp/requirements.lock",
        "pyproject.toml": "/src/pyproject.toml",
        "README.md": "/src/README.md",
        "bids_spheres": "/src/bids_spheres",
        "scripts/image/templates.py": "/tmp/image/templates.py",
        "scripts/image/templates.sha256": "/tmp/image/templates.sha256",
    }
    for source in files:
        assert (ROOT / source).exists(), source


def test_installs_the_same_lock_with_the_same_commands() -> None:
    post = _body("post")
    docker = _docker_commands()
    pip = [c for c in docker if "/opt/venv/bin/python -m pip" in c]
    assert len(pip) == 6  # build tools, lock, check, package, check, uninstall
    assert [c for c in post if "/opt/venv/bin/python -m pip" in c] == pip
    for command in pip[:2]:
        assert "--require-hashes" in command
    assert "-r /tmp/requirements.lock" in pip[1]
    # the same venv, build-tools extract, pruning, checks and demo, in the same order
    shared = [c for c in docker if c.startswith(("python3 -m venv", "sed -n", "find /opt/venv",
                                                 "rm -rf /opt/venv", "if /opt/venv",
                                                 "/opt/venv/bin/"))]  # fmt: skip
    assert [c for c in post if c in shared] == shared
    assert any("bids_spheres-demo /tmp/demo" in c for c in post)
    # the templates: fetched and checked by the same script and manifest
    fetch = (
        "/opt/venv/bin/python /tmp/image/templates.py fetch /opt/templateflow "
        "/tmp/image/templates.sha256"
    )
    assert any(fetch in c for c in docker) and fetch in post
    # a SIF has no layers: the build tools and the base's pip go in the same %post
    assert post.index("apt-get purge -y -qq --auto-remove binutils >/dev/null") > post.index(fetch)
    assert "(python3 -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true)" in post


def _docker_env() -> dict[str, str]:
    runtime = DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]
    body = re.sub(r"\\\n\s*", " ", runtime)
    env: dict[str, str] = {}
    for line in body.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_same_environment_entry_point_and_labels() -> None:
    env = {}
    for line in _body("environment"):
        assert line.startswith("export "), line
        key, _, value = line[len("export ") :].partition("=")
        env[key] = value
    docker = _docker_env()
    assert env.pop("BIDS_SPHERES_CONTAINER_TYPE") == "apptainer"
    assert docker.pop("BIDS_SPHERES_CONTAINER_TYPE") == "docker"
    assert env.pop("BIDS_SPHERES_CONTAINER_TAG") == "{{ CONTAINER_TAG }}"
    assert docker.pop("BIDS_SPHERES_CONTAINER_TAG") == "${CONTAINER_TAG}"
    assert env == docker  # PATH, TEMPLATEFLOW_HOME, MPLCONFIGDIR=/tmp/matplotlib, ...
    assert env["MPLCONFIGDIR"].startswith("/tmp/") and env["XDG_CACHE_HOME"].startswith("/tmp/")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing written into the read-only image
    assert _body("runscript") == ['exec bids_spheres "$@"']
    assert re.search(r'^ENTRYPOINT \["bids_spheres"\]$', DOCKERFILE, flags=re.M)
    assert _body("test") == ["bids_spheres --version"]
    labels = dict(line.split(" ", 1) for line in _body("labels"))
    assert labels["org.opencontainers.image.version"] == "{{ VERSION }}"
    assert labels["org.opencontainers.image.created"] == "{{ CREATED }}"
    assert labels["org.opencontainers.image.revision"] == "{{ REVISION }}"
    assert set(_arguments()) >= {"VERSION", "CREATED", "REVISION", "CONTAINER_TAG",
                                 "TEMPLATEFLOW_FETCH", "BASE_IMAGE"}  # fmt: skip
    for arg in re.findall(r"\{\{\s*(\w+)\s*\}\}", DEF):
        assert arg in _arguments(), f"{{{{ {arg} }}}} has no default in %arguments"


def test_the_slurm_scripts_run_the_image_built_from_it() -> None:
    slurm = ROOT / "scripts" / "slurm"
    for name in ("bids_spheres_array.sbatch", "submit.sh"):
        assert "apptainer build bids_spheres.sif apptainer.def" in (slurm / name).read_text()
    array = (slurm / "bids_spheres_array.sbatch").read_text()
    assert '"$runtime" run --cleanenv' in array  # the %runscript: bids_spheres
    assert ":/data:ro" in array  # input bound read-only
