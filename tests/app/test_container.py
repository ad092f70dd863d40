"""The container recipe: Dockerfile, requirements.lock, .dockerignore, build script.

No container engine is needed: the Dockerfile is parsed and its promises are checked
(base pinned by digest, hashed install from the lock, no pip/setuptools/tests at run time,
non-root user, entry point, OCI labels, environment with the container's name), its
TemplateFlow step is run against a stand-in ``templateflow`` package and the sha256
manifest, the build script is run against a stand-in ``buildah``, and the app is run with
the image's environment to show it writes nothing outside the output directory and /tmp
(what ``docker run --read-only --tmpfs /tmp`` allows). The image itself is built and run by
CI (.circleci/config.yml) and by ``scripts/build-image.sh``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bids_spheres.app.demo import DemoInfo

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
VERSION = re.search(r'^version = "([^"]+)"', PYPROJECT, flags=re.M).group(1)
REQUIRED_TEMPLATES = {
    ("MNI152NLin2009cAsym", 1, "brain", "mask"),
    ("MNI152NLin2009cAsym", 2, "brain", "mask"),
    ("MNI152NLin2009cAsym", 1, None, "T1w"),
    ("MNI152NLin2009cAsym", 2, None, "T1w"),
    ("MNI152NLin6Asym", 2, "brain", "mask"),
}


# --------------------------------------------------------------------------- parsing


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", "", "\n".join(lines))  # as Docker joins continuation lines
    out: list[tuple[str, str]] = []
    for chunk in re.split(r"\n(?=[A-Z]+\s)", joined):
        chunk = chunk.strip()
        if chunk:
            word, _, rest = chunk.partition(" ")
            out.append((word, rest.strip()))
    return out


INSTRUCTIONS = _instructions(DOCKERFILE)


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in INSTRUCTIONS:
        if word == "FROM":
            current = rest.split()[-1]
            stages[current] = [(word, rest)]
        elif current is not None:
            stages[current].append((word, rest))
    return stages


STAGES = _stages()
FINAL = list(STAGES.values())[-1]


def _args(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in _args(stage, "ENV"):
        for item in shlex.split(rest.replace("\n", " ")):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def _run_in_stage(name: str) -> str:
    (command,) = _args(STAGES[name], "RUN")
    return command


# --------------------------------------------------------------------------- Dockerfile


def test_base_image_is_python_311_slim_pinned_by_digest_and_overridable() -> None:
    assert re.search(
        r"^ARG BASE_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}$", DOCKERFILE, flags=re.M
    )
    froms = [rest for w, rest in INSTRUCTIONS if w == "FROM"]
    assert froms[0].startswith("${BASE_IMAGE}")
    assert froms[-1].startswith("${BASE_IMAGE}")  # the runtime: no compilers, no build layers


def _commands(stage: str) -> list[list[str]]:
    return [
        cmd.split()
        for run in _args(STAGES[stage], "RUN")
        for cmd in run.split("&&")
        if cmd.strip()
    ]


def test_packages_come_from_the_hashed_lock_only() -> None:
    installs = [c for c in _commands("build") if " ".join(c[:4]).endswith("pip install")]
    assert len(installs) == 3, installs
    tools, lock, package = installs
    assert tools[-2:] == ["-r", "/tmp/build-tools.lock"]
    assert lock[-2:] == ["-r", "/tmp/requirements.lock"]
    for command in (tools, lock):
        assert "--require-hashes" in command and "--no-deps" in command
    assert "--no-build-isolation" in lock  # docopt is built with the locked setuptools
    assert "--no-deps" in package and "--no-build-isolation" in package and package[-1] == "/src"
    build_runs = " ".join(_args(STAGES["build"], "RUN"))
    assert "sed -n '/^# build tools/,$p' /tmp/requirements.lock > /tmp/build-tools.lock" in (
        build_runs
    )
    assert build_runs.count("pip check") == 2
    assert "PIP_CONSTRAINT" not in _env(STAGES["build"])
    assert "requirements.lock" in " ".join(_args(STAGES["build"], "COPY"))


def test_runtime_has_no_pip_setuptools_or_tests() -> None:
    build = " ".join(_args(STAGES["build"], "RUN"))
    assert "pip uninstall --yes pip setuptools wheel" in build
    assert "find /opt/venv -depth -type d -name tests -exec rm -rf {} +" in build
    assert 'if /opt/venv/bin/python -c "import pip" 2>/dev/null; then exit 1; fi' in build
    assert "bids_spheres-demo /tmp/demo" in build  # the pruned venv still runs the app
    strip = next(c for c in _commands("build") if c[:1] == ["find"] and "strip" in c)
    assert '"*.libs/*"' in strip and "--strip-debug" in strip  # vendored libs untouched
    runtime = " ".join(_args(FINAL, "RUN"))
    assert "python3 -m pip uninstall --yes pip setuptools wheel" in runtime  # the base's own
    assert "/usr/share/python-wheels" in runtime
    # the runtime takes the virtualenv and templates only, no build tool
    assert [c.split()[0] for c in _args(FINAL, "COPY")] == ["--from=build", "--from=templates"]


def test_runtime_user_entrypoint_labels_and_environment() -> None:
    (user,) = _args(FINAL, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert _args(FINAL, "ENTRYPOINT") == ['["bids_spheres"]']
    labels = " ".join(_args(FINAL, "LABEL"))
    assert 'org.opencontainers.image.source="${SOURCE_URL}"' in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.created="${CREATED}"' in labels
    assert 'org.opencontainers.image.revision="${REVISION}"' in labels
    assert 'org.bids_spheres.templateflow-fetch="${TEMPLATEFLOW_FETCH}"' in labels
    args = _args(FINAL, "ARG")
    assert f"VERSION={VERSION}" in args  # the label's default: pyproject's
    assert "CONTAINER_TAG=bids_spheres/bids_spheres:${VERSION}" in args
    env = _env(FINAL)
    # provenance reads these two names (another part of the app): keep them exactly
    assert env["BIDS_SPHERES_CONTAINER_TYPE"] == "docker"
    assert env["BIDS_SPHERES_CONTAINER_TAG"] == "${CONTAINER_TAG}"
    assert env["TEMPLATEFLOW_HOME"] == "/opt/templateflow"
    assert env["TEMPLATEFLOW_AUTOUPDATE"] == "0"
    assert env["MPLCONFIGDIR"] == "/tmp/matplotlib"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing to write under --read-only
    copies = _args(FINAL, "COPY")
    assert "--from=build /opt/venv /opt/venv" in copies
    assert "--from=templates /opt/templateflow /opt/templateflow" in copies


def _fake_templateflow(tmp_path: Path, size: int) -> Path:
    pkg = tmp_path / "fake" / "templateflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "api.py").write_text(
        f"""
import json, os
from pathlib import Path

def get(template, resolution=None, desc=None, suffix=None, extension=None):
    home = Path(os.environ["TEMPLATEFLOW_HOME"])
    parts = [f"tpl-{{template}}", f"res-{{resolution:02d}}"] + ([f"desc-{{desc}}"] if desc else [])
    path = home / f"tpl-{{template}}" / ("_".join(parts) + f"_{{suffix}}{{extension}}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * {size})
    with open(home.parent / "calls.jsonl", "a") as log:
        log.write(json.dumps([template, resolution, desc, suffix, extension]) + "\\n")
    return path
""",
        encoding="utf-8",
    )
    return pkg.parent


MANIFEST = ROOT / "scripts" / "image" / "templates.sha256"


def _manifest(tmp_path: Path, size: int) -> Path:
    """templates.sha256 with the sums of the stand-in's files (``size`` bytes of b"x")."""
    digest = hashlib.sha256(b"x" * size).hexdigest()
    lines = [line.split("  ", 1)[1] for line in MANIFEST.read_text().splitlines() if "  " in line]
    path = tmp_path / "templates.sha256"
    path.write_text("".join(f"{digest}  {name}\n" for name in lines), encoding="utf-8")
    return path


def _run_templates_step(
    tmp_path: Path, fetch: str, size: int, manifest_size: int | None = None
) -> subprocess.CompletedProcess:
    home = tmp_path / "tf" / "home"
    manifest = _manifest(tmp_path, size if manifest_size is None else manifest_size)
    command = (
        _run_in_stage("templates")
        .replace("/opt/venv/bin/python", shlex.quote(sys.executable))
        .replace("/opt/templateflow", shlex.quote(str(home)))
        .replace("/tmp/image/templates.sha256", shlex.quote(str(manifest)))
        .replace("/tmp/image/templates.py", shlex.quote(str(MANIFEST.with_name("templates.py"))))
    )
    env = dict(os.environ, TEMPLATEFLOW_FETCH=fetch, TEMPLATEFLOW_HOME=str(home))
    env["PYTHONPATH"] = str(_fake_templateflow(tmp_path, size))
    return subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env=env, timeout=120
    )


def test_manifest_lists_the_templates_the_app_may_use() -> None:
    copies = _args(STAGES["templates"], "COPY")
    assert copies == ["scripts/image/templates.py scripts/image/templates.sha256 /tmp/image/"]
    names = [line.split("  ", 1)[1] for line in MANIFEST.read_text().splitlines() if "  " in line]
    parsed = set()
    for name in names:
        m = re.fullmatch(r"tpl-(\w+?)/tpl-\1_res-(\d+)(?:_desc-(\w+?))?_(\w+)\.nii\.gz", name)
        assert m, name
        parsed.add((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    assert parsed == REQUIRED_TEMPLATES


def test_templateflow_step_fetches_the_templates_the_app_may_use(tmp_path: Path) -> None:
    result = _run_templates_step(tmp_path, "1", 20_000)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "tf" / "calls.jsonl").read_text(encoding="utf-8")
    calls = [json.loads(line) for line in log.splitlines()]
    assert {tuple(c[:4]) for c in calls} == REQUIRED_TEMPLATES
    assert {c[4] for c in calls} == {".nii.gz"}
    assert len(result.stdout.split()) == len(REQUIRED_TEMPLATES)


def test_templateflow_step_fails_the_build_on_a_bad_download(tmp_path: Path) -> None:
    result = _run_templates_step(tmp_path, "1", 19_999, manifest_size=20_000)
    assert result.returncode != 0
    assert "TemplateFlow template check failed" in result.stderr
    assert "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz: sha256 " in result.stderr


def test_templateflow_step_fails_on_an_unrecorded_checksum(tmp_path: Path) -> None:
    home = tmp_path / "home" / "tpl-MNI152NLin6Asym"
    home.mkdir(parents=True)
    (home / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz").write_bytes(b"x")
    manifest = tmp_path / "m.sha256"
    manifest.write_text(
        "UNRECORDED  tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz\n"
    )
    script = MANIFEST.with_name("templates.py")
    done = subprocess.run(
        [sys.executable, str(script), "verify", str(tmp_path / "home"), str(manifest)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "no sha256 recorded" in done.stderr
    recorded = subprocess.run(
        [sys.executable, str(script), "record", str(tmp_path / "home"), str(manifest)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    assert manifest.read_text().split()[0] == hashlib.sha256(b"x").hexdigest()
    done = subprocess.run(
        [sys.executable, str(script), "verify", str(tmp_path / "home"), str(manifest)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_templateflow_step_can_be_skipped(tmp_path: Path) -> None:
    result = _run_templates_step(tmp_path, "0", 20_000)
    assert result.returncode == 0, result.stderr
    assert "no templates fetched" in result.stdout
    assert not (tmp_path / "tf" / "calls.jsonl").exists()
    assert (tmp_path / "tf" / "home").is_dir()  # an empty TEMPLATEFLOW_HOME in the image


# --------------------------------------------------------------------------- lock file


def _lock_entries() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of requirements.lock (continuation lines joined)."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(
            r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)((?:\s+--hash=sha256:[0-9a-f]{64})*)",
            line,
        )
        assert match, f"requirements.lock: {line!r} is not name==version --hash=sha256:..."
        name = canonicalize_name(match.group(1))
        assert name not in entries, f"requirements.lock pins {name} twice"
        entries[name] = (match.group(2), re.findall(r"[0-9a-f]{64}", match.group(3)))
    return entries


def _lock() -> dict[str, str]:
    return {name: version for name, (version, _) in _lock_entries().items()}


def test_every_pin_of_the_lock_has_a_hash() -> None:
    entries = _lock_entries()
    assert len(entries) > 40
    for name, (version, hashes) in entries.items():
        assert hashes, f"requirements.lock: {name}=={version} has no --hash (--write-lock)"


def test_lock_holds_distributed_for_the_dask_scheduler() -> None:
    pins = _lock()
    for req in map(Requirement, _toml_list("dask")):
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name]), req
    assert "dask" in pins and "tornado" in pins  # its closure too


def _toml_list(key: str) -> list[str]:
    body = re.search(rf"^{re.escape(key)} = \[(.*?)\]", PYPROJECT, flags=re.M | re.S).group(1)
    return re.findall(r'"([^"]+)"', body)


def test_lock_pins_every_runtime_dependency_within_pyproject_ranges() -> None:
    pins = _lock()
    wanted = [
        Requirement(r)
        for r in (*_toml_list("dependencies"), *_toml_list("templateflow"), *_toml_list("dask"))
    ]
    assert {canonicalize_name(r.name) for r in wanted} >= {
        "numpy", "scipy", "nibabel", "pandas", "pybids", "joblib", "tqdm", "isal",
        "matplotlib", "templateflow",
    }  # fmt: skip
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock does not pin {req.name} (see README, Containers)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject's {req}"
        )


def test_lock_pins_the_build_backend() -> None:
    pins = _lock()
    for text in _toml_list("requires"):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name]), text
    assert "pip" in pins


# --------------------------------------------------------------------------- .dockerignore


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        rules.append((negate, re.compile(regex)))
    return rules


def _in_context(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            included = negate
    return included


def test_build_context_is_what_the_dockerfile_copies() -> None:
    rules = _ignore_rules()
    files = [
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(ROOT).parts
    ]
    context = {f for f in files if _in_context(f, rules)}
    sources = set()
    for rest in (r for w, r in INSTRUCTIONS if w == "COPY" and "--from" not in r):
        sources.update(rest.split()[:-1])
    for source in sources:
        assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), source
    package = {
        f for f in files if f.startswith("bids_spheres/") and "__pycache__" not in f.split("/")
    }
    assert package <= context
    assert context - package == {
        "Dockerfile", "requirements.lock", "pyproject.toml", "README.md",
        "scripts/image/templates.py", "scripts/image/templates.sha256",
    }  # fmt: skip
    assert not any(f.endswith((".pyc", ".pyo")) for f in context)


# --------------------------------------------------------------------------- runtime contract


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


def test_image_environment_writes_only_to_output_and_tmp(
    demo_one_run: DemoInfo, tmp_path: Path
) -> None:
    """The app under the image's ENV: input, HOME, cwd and TEMPLATEFLOW_HOME stay untouched."""
    demo = demo_one_run  # shared and read-only (tests/conftest.py)
    fake_tmp, home, cwd, tf = (tmp_path / n for n in ("tmp", "home", "cwd", "templateflow"))
    for d in (fake_tmp, home, cwd, tf):
        d.mkdir()
    env = dict(os.environ)
    for key, value in _env(FINAL).items():
        if key != "PATH":
            env[key] = value.replace("/tmp", str(fake_tmp)).replace("/opt/templateflow", str(tf))
    env.update(HOME=str(home), TMPDIR=str(fake_tmp), HTTPS_PROXY="http://127.0.0.1:9")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    assert env["MPLCONFIGDIR"] == str(fake_tmp / "matplotlib")
    before = {d: _snapshot(d) for d in (demo.root, home, cwd, tf)}
    out = tmp_path / "out"
    options = ["--seeds", str(demo.seeds_tsv), "--nprocs", "2", "--min-volumes", "40"]
    for level in ("participant", "group"):
        result = subprocess.run(
            [sys.executable, "-m", "bids_spheres", str(demo.root), str(out), level, *options],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
    for d, snap in before.items():
        assert _snapshot(d) == snap, f"{d} was written to"
    assert len(list(out.glob("sub-*/func/*_timeseries.tsv"))) == 2
    assert (out / "group" / "report.html").is_file()
    assert (fake_tmp / "matplotlib").is_dir()  # matplotlib honoured MPLCONFIGDIR


# --------------------------------------------------------------------------- build script

SCRIPT = ROOT / "scripts" / "build-image.sh"


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_build_script_syntax_and_help() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=60).returncode == 0
    result = _script("--help")
    assert result.returncode == 0
    for option in (
        "--tag", "--engine", "--base", "--debian-base", "--no-templates",
        "--templateflow-home", "--ca-bundle", "--save", "--write-lock", "Needs:",
        "--record-template-sums", "-notemplates",
    ):  # fmt: skip
        assert option in result.stdout, option
    assert "bids_spheres/bids_spheres:<pyproject version>" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown option --frobnicate"),
        (["--engine", "podman"], "--engine must be docker or buildah, not podman"),
        (["--tag"], "--tag needs a value"),
    ],
)
def test_build_script_refuses_bad_options_before_building(args: list[str], message: str) -> None:
    result = _script(*args)
    assert result.returncode != 0
    assert message in result.stderr


FAKE_BUILDAH = """#!/usr/bin/env bash
# stand-in buildah: records each call; 'images' answers a size
printf '%s\\0' "$@" >> "$BUILDAH_RECORD"
printf '\\n' >> "$BUILDAH_RECORD"
if [ "$1" = images ]; then echo "432 MB"; fi
exit 0
"""


def _fake_build(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "buildah").write_text(FAKE_BUILDAH, encoding="utf-8")
    (bin_dir / "buildah").chmod(0o755)
    record = tmp_path / "buildah.txt"
    record.write_bytes(b"")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.update(BUILDAH_RECORD=str(record), SOURCE_DATE_EPOCH="1700000000")
    done = subprocess.run(
        ["bash", str(SCRIPT), "--engine", "buildah", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip
    calls = [line.split("\0")[:-1] for line in record.read_text().splitlines() if line]
    return done, calls


def _build_args(call: list[str]) -> dict[str, str]:
    return dict(call[i + 1].split("=", 1) for i, word in enumerate(call) if word == "--build-arg")


def test_build_script_labels_and_tags(tmp_path: Path) -> None:
    done, calls = _fake_build(tmp_path)
    assert done.returncode == 0, done.stderr
    bud = next(c for c in calls if c[0] == "bud")
    tag = f"bids_spheres/bids_spheres:{VERSION}"
    assert bud[bud.index("-t") + 1] == tag
    args = _build_args(bud)
    assert args["CREATED"] == "2023-11-14T22:13:20Z"  # SOURCE_DATE_EPOCH
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.strip()
    assert args["REVISION"] in (head, head + "+dirty")
    assert args["CONTAINER_TAG"] == tag and args["TEMPLATEFLOW_FETCH"] == "1"
    assert args["VERSION"] == VERSION
    assert f"built {tag}, size 432 MB" in done.stdout


def test_a_build_without_templates_is_tagged_differently(tmp_path: Path) -> None:
    done, calls = _fake_build(tmp_path, "--no-templates")
    assert done.returncode == 0, done.stderr
    bud = next(c for c in calls if c[0] == "bud")
    tag = f"bids_spheres/bids_spheres:{VERSION}-notemplates"
    assert bud[bud.index("-t") + 1] == tag
    assert _build_args(bud)["TEMPLATEFLOW_FETCH"] == "0"
    assert _build_args(bud)["CONTAINER_TAG"] == tag


def test_a_local_templateflow_home_is_checked_before_building(tmp_path: Path) -> None:
    home = tmp_path / "tf"
    (home / "tpl-MNI152NLin6Asym").mkdir(parents=True)
    done, calls = _fake_build(tmp_path, "--templateflow-home", str(home))
    assert done.returncode != 0
    assert "does not hold the templates of templates.sha256" in done.stderr
    assert "TemplateFlow template check failed" in done.stderr
    assert not any(c and c[0] == "bud" for c in calls)
