"""boutiques.json describes ``build_parser()`` option for option, and bosh runs it.

Every argparse action (but ``--help`` and ``--version``) is one Boutiques input
whose flag, type, bounds, list-ness, default and value choices agree with the
parser; ``--seeds``, ``--mask`` and ``--denoise-strategy``, which take a built-in name
or a path, are two inputs each (the names as value choices, and a ``File``), mutually
exclusive. Every path the app reads or writes is a ``File`` input, so that bosh mounts
it into the container. The parser's mutually exclusive groups are the descriptor's
groups; the container image and tool version are pyproject.toml's version; ``bosh
validate`` accepts the descriptor; ``bosh exec launch`` in container mode (a stand-in
``docker`` on PATH records what bosh runs) mounts the output and every given file and
runs the command line ``bosh exec simulate`` prints; ``bosh exec launch
--no-container`` runs the demo dataset end to end (participant, then group).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_spheres import __version__
from bids_spheres.app.cli import ANALYSIS_LEVELS, EXIT_CODES, build_parser
from bids_spheres.app.confounds import list_presets
from bids_spheres.app.demo import DEMO_SEEDS, DemoInfo
from bids_spheres.app.seeds import list_builtin

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_PATH = ROOT / "boutiques.json"
DESCRIPTOR = json.loads(DESCRIPTOR_PATH.read_text(encoding="utf-8"))
INPUTS = {i["id"]: i for i in DESCRIPTOR["inputs"]}
PARSER = build_parser()

# Every path the app reads or writes: a Boutiques File, which bosh mounts into the container
# (a directory the app creates must exist before the launch). A new path argument goes here.
PATHS = {"bids_dir", "output_dir", "derivatives", "bids_filter_file", "work_dir",
         "bids_database_dir"}  # fmt: skip
# Options taking a built-in name or a path: a String input with the names as choices, and a
# File input "<id>_file" with the same flag.
NAMES_OR_PATH = {
    "seeds": list_builtin(),
    "mask": ["fmriprep", "template", "none"],
    "denoise_strategy": list_presets(),
}


def _input_id(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.dest
    return _long_flag(action)[2:].replace("-", "_")


def _long_flag(action: argparse.Action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))


ACTIONS = [
    a
    for a in PARSER._actions
    if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
]
PAIRS = [(a, INPUTS.get(_input_id(a))) for a in ACTIONS]
IDS = [_input_id(a) for a in ACTIONS]
ALL_IDS = [i for a in ACTIONS for i in (_input_id(a), f"{_input_id(a)}_file")[
    : 2 if _input_id(a) in NAMES_OR_PATH else 1]]  # fmt: skip


def _bosh() -> str:
    local = Path(sys.executable).with_name("bosh")
    found = str(local) if local.exists() else shutil.which("bosh")
    assert found, "bosh is not installed (pip install boutiques; it is in the test extras)"
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _rejects(action: argparse.Action, text: str) -> bool:
    try:
        action.type(text)
    except argparse.ArgumentTypeError:
        return True
    return False


def test_every_parser_option_is_an_input_and_nothing_else() -> None:
    assert sorted(ALL_IDS) == sorted(INPUTS), "boutiques.json and build_parser() disagree"
    assert len(set(ALL_IDS)) == len(ALL_IDS)


def test_command_line_has_every_value_key_once_positionals_first() -> None:
    words = DESCRIPTOR["command-line"].split()
    assert words[0] == "bids_spheres"
    keys = [f"[{i.upper()}]" for i in ALL_IDS]
    assert sorted(words[1:]) == sorted(keys)
    positionals = [f"[{_input_id(a).upper()}]" for a in ACTIONS if not a.option_strings]
    assert words[1 : 1 + len(positionals)] == positionals
    for action, spec in PAIRS:
        assert spec["value-key"] == f"[{_input_id(action).upper()}]"


@pytest.mark.parametrize(("action", "spec"), PAIRS, ids=IDS)
def test_flag_and_optionality(action: argparse.Action, spec: dict) -> None:
    if not action.option_strings:
        assert "command-line-flag" not in spec
        assert spec["optional"] is False
        return
    assert spec["optional"] is True
    if isinstance(action, argparse._CountAction):
        # -v / -vv: the value carries the flag
        assert "command-line-flag" not in spec
        assert all(c.startswith(tuple(action.option_strings)) for c in spec["value-choices"])
        return
    assert spec["command-line-flag"] == _long_flag(action)


@pytest.mark.parametrize(("action", "spec"), PAIRS, ids=IDS)
def test_type_bounds_and_lists(action: argparse.Action, spec: dict) -> None:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        assert spec["type"] == "Flag"
        return
    if isinstance(action, argparse._CountAction):
        assert spec["type"] == "String"
        assert spec["value-choices"] == ["-v", "-vv"]
        args = PARSER.parse_args(["in", "out", "participant", spec["value-choices"][-1]])
        assert getattr(args, action.dest) == 2
        return
    assert spec.get("list", False) == (action.nargs == "+")
    if action.nargs == "+":
        assert spec["min-list-entries"] == 1
    dest = action.dest
    if action.type is Path or dest in PATHS:
        assert dest in PATHS, f"{dest} is a path: add it to PATHS and make it a File"
        assert spec["type"] == "File"
        return
    if dest in NAMES_OR_PATH:
        assert spec["type"] == "String"
        assert spec["value-choices"] == NAMES_OR_PATH[dest]
        companion = INPUTS[f"{dest}_file"]
        assert companion["type"] == "File"
        assert companion["command-line-flag"] == spec["command-line-flag"]
        assert companion["optional"] is True and "default-value" not in companion
        # the parser takes a path where it takes a name
        args = PARSER.parse_args(["in", "out", "participant", _long_flag(action), "/x/y.tsv"])
        assert getattr(args, dest) == "/x/y.tsv"
        return
    if spec["type"] == "String":
        sample = "01" if dest == "run" else "abc1"  # run numbers are strings of digits
        value = action.type(sample) if action.type else sample
        assert isinstance(value, str)
        return
    assert spec["type"] == "Number", spec
    assert action.type is not None
    converted = action.type("1")
    assert isinstance(converted, (int, float))
    assert spec["integer"] is isinstance(converted, int)
    if spec["integer"]:
        assert _rejects(action, "1.5")
    low = spec["minimum"]
    if spec.get("exclusive-minimum"):
        assert _rejects(action, str(low))
        assert not _rejects(action, str(low + (1 if spec["integer"] else 1e-6)))
    else:
        assert not _rejects(action, str(low))
        assert _rejects(action, str(low - (1 if spec["integer"] else 1e-6)))
    if "maximum" in spec:
        assert not _rejects(action, str(spec["maximum"]))
        assert _rejects(action, str(spec["maximum"] + 1e-6))
    else:
        assert not _rejects(action, "1000000" if spec["integer"] else "1e6")


@pytest.mark.parametrize(("action", "spec"), PAIRS, ids=IDS)
def test_defaults_and_choices(action: argparse.Action, spec: dict) -> None:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        # bosh would add a flag with a default to every command line
        assert "default-value" not in spec
        assert "value-choices" not in spec
        return
    if isinstance(action, argparse._CountAction):
        assert "default-value" not in spec
        return
    if action.dest in NAMES_OR_PATH:
        # no default in the descriptor (bosh would send it next to the File input); the
        # description names the app's default, one of the choices
        assert "default-value" not in spec
        assert action.default in spec["value-choices"]
        assert f"default: {action.default}" in spec["description"]
        return
    if action.default is None:
        assert "default-value" not in spec
    else:
        assert spec["default-value"] == action.default
        assert type(spec["default-value"]) is type(action.default)
    if action.dest == "analysis_level":
        assert spec["value-choices"] == list(ANALYSIS_LEVELS)
    elif action.choices is not None:
        assert spec["value-choices"] == list(action.choices)
    else:
        assert "value-choices" not in spec


def test_mutually_exclusive_groups() -> None:
    parser_groups = sorted(
        sorted(_input_id(a) for a in g._group_actions) for g in PARSER._mutually_exclusive_groups
    )
    parser_groups += [sorted([name, f"{name}_file"]) for name in NAMES_OR_PATH]
    descriptor_groups = sorted(
        sorted(g["members"]) for g in DESCRIPTOR.get("groups", []) if g.get("mutually-exclusive")
    )
    assert sorted(parser_groups) == descriptor_groups


def test_version_image_and_exit_codes() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', pyproject, flags=re.M).group(1)
    assert __version__ == version
    assert DESCRIPTOR["tool-version"] == version
    assert DESCRIPTOR["container-image"] == {
        "type": "docker",
        "image": f"bids_spheres/bids_spheres:{version}",
        "entrypoint": True,
    }
    codes = {e["code"] for e in DESCRIPTOR["error-codes"]}
    assert codes == set(EXIT_CODES.values()) - {0}


def test_bosh_validate() -> None:
    result = subprocess.run(
        [_bosh(), "validate", str(DESCRIPTOR_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def _launch(invocation: dict, work: Path) -> subprocess.CompletedProcess:
    path = work / f"invocation-{invocation['analysis_level']}.json"
    path.write_text(json.dumps(invocation), encoding="utf-8")
    bosh = _bosh()
    checked = subprocess.run(
        [bosh, "invocation", "-i", str(path), str(DESCRIPTOR_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return subprocess.run(
        [
            bosh,
            "exec",
            "launch",
            "--no-container",
            "--skip-data-collection",
            *map(str, (DESCRIPTOR_PATH, path)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
        env=_env(),
    )


def test_bosh_exec_launch_runs_the_demo(demo_one_run: DemoInfo, tmp_path: Path) -> None:
    demo = demo_one_run  # shared and read-only (tests/conftest.py)
    out = tmp_path / "out"
    common = {
        "bids_dir": str(demo.root),
        "output_dir": str(out),
        "seeds_file": str(demo.seeds_tsv),
        "work_dir": str(tmp_path / "work"),
    }
    participant = _launch(
        {**common, "analysis_level": "participant", "participant_label": ["01", "02"],
         "no_detrend": True, "radius": 6, "nprocs": 2},
        tmp_path,
    )  # fmt: skip
    assert participant.returncode == 0, participant.stdout + participant.stderr
    assert "--no-detrend" in participant.stdout
    series = sorted(out.glob("sub-*/func/*_desc-simple_timeseries.tsv"))
    assert [p.name.split("_")[0] for p in series] == ["sub-01", "sub-02"]
    for tsv in series:
        header = tsv.read_text(encoding="utf-8").splitlines()[0].split("\t")
        assert header == [s.name for s in DEMO_SEEDS]
        sidecar = json.loads(tsv.with_suffix(".json").read_text(encoding="utf-8"))
        params = sidecar["CleaningParameters"]
        assert params["detrend"] is False
        assert params["radius_default_mm"] == 6
        assert params["standardize"] == "zscore_sample"  # the descriptor's default, sent by bosh
    assert len(sorted(out.glob("sub-*/func/*_meas-PearsonCorrelation_*_relmat.tsv"))) == 2
    assert (out / "dataset_description.json").is_file()

    group = _launch({**common, "analysis_level": "group", "min_volumes": 40}, tmp_path)
    assert group.returncode == 0, group.stdout + group.stderr
    report = out / "group" / "report.html"
    assert report.is_file() and report.stat().st_size > 1000
    assert sorted(p.name for p in (out / "group").glob("*_relmat.tsv"))


# --------------------------------------------------------------------------- container mode

FAKE_DOCKER = """#!/bin/sh
# stand-in docker: 'pull' succeeds; 'run' records its arguments and the script bosh wrote
if [ "$1" = run ]; then
    printf '%s\\n' "$@" > "$BOSH_TEST_RECORD"
    for last in "$@"; do :; done
    cp "$last" "$BOSH_TEST_RECORD.script"
fi
exit 0
"""


def _container_invocation(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    paths = {
        "bids_dir": data / "fmriprep",
        "output_dir": tmp_path / "results" / "out",
        "derivatives": data / "derivatives",
        "work_dir": tmp_path / "scratch" / "work",
        "bids_database_dir": tmp_path / "scratch" / "db",
        "seeds_file": data / "code" / "seeds.tsv",
        "mask_file": data / "code" / "mask.nii.gz",
        "denoise_strategy_file": data / "code" / "strategy.json",
        "bids_filter_file": data / "code" / "filter.json",
    }
    for key, path in paths.items():
        if key.endswith("_file"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n", encoding="utf-8")
        else:
            path.mkdir(parents=True, exist_ok=True)
    return {
        **{k: str(v) for k, v in paths.items()},
        "analysis_level": "participant",
        "participant_label": ["01"],
        "verbose": "-vv",
    }


def test_bosh_container_mode_mounts_the_output_and_every_given_file(tmp_path: Path) -> None:
    invocation = _container_invocation(tmp_path)
    inv_path = tmp_path / "invocation.json"
    inv_path.write_text(json.dumps(invocation), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER, encoding="utf-8")
    (bin_dir / "docker").chmod(0o755)
    record = tmp_path / "docker-run.txt"
    env = _env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["BOSH_TEST_RECORD"] = str(record)
    launch_dir = tmp_path / "launch"  # bosh also mounts its working directory: not a parent
    launch_dir.mkdir()

    simulated = subprocess.run(
        [_bosh(), "exec", "simulate", "-i", str(inv_path), str(DESCRIPTOR_PATH)],
        capture_output=True, text=True, timeout=120, env=env, cwd=launch_dir,
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    command = next(
        line.strip() for line in simulated.stdout.splitlines() if "bids_spheres " in line
    )
    subprocess.run(
        [
            _bosh(),
            "exec",
            "launch",
            "-u",
            "--skip-data-collection",
            str(DESCRIPTOR_PATH),
            str(inv_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=launch_dir,
    )  # bosh then misses the outputs the stand-in did not write: its exit code is not checked
    args = record.read_text(encoding="utf-8").splitlines()
    assert args[0] == "run"
    assert f"bids_spheres/bids_spheres:{__version__}" in args
    mounts = {}
    for flag, value in itertools.pairwise(args):
        if flag == "-v":
            host, _, inside = value.partition(":")
            mounts[inside] = host
    assert mounts.pop(str(launch_dir)) == str(launch_dir)
    for key, value in invocation.items():
        if INPUTS[key]["type"] == "File":
            assert mounts.get(value) == value, f"{key} ({value}) is not mounted: {mounts}"
    # the container runs exactly the simulated command line, whose paths are all mounted
    script = (tmp_path / "docker-run.txt.script").read_text(encoding="utf-8")
    assert script.splitlines()[-1].strip() == command
    words = command.split()
    assert words[:4] == [
        "bids_spheres",
        invocation["bids_dir"],
        invocation["output_dir"],
        "participant",
    ]
    for word in words:
        if word.startswith("/"):
            assert any(word == m or word.startswith(m + "/") for m in mounts), word
    for flag, key in (("--seeds", "seeds_file"), ("--mask", "mask_file"),
                      ("--denoise-strategy", "denoise_strategy_file"),
                      ("--work-dir", "work_dir"), ("--bids-database-dir", "bids_database_dir"),
                      ("--derivatives", "derivatives"),
                      ("--bids-filter-file", "bids_filter_file")):  # fmt: skip
        assert words[words.index(flag) + 1] == invocation[key], flag
    assert "-vv" in words
    parsed = PARSER.parse_args(words[1:])  # the app's parser accepts the command
    assert parsed.verbose == 2 and parsed.participant_label == ["01"]


def test_bosh_refuses_a_name_and_a_file_for_the_same_option(tmp_path: Path) -> None:
    invocation = _container_invocation(tmp_path)
    invocation["seeds"] = "power2011"
    inv_path = tmp_path / "invocation.json"
    inv_path.write_text(json.dumps(invocation), encoding="utf-8")
    result = subprocess.run(
        [_bosh(), "invocation", "-i", str(inv_path), str(DESCRIPTOR_PATH)],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert result.returncode != 0
    assert "seeds" in result.stdout + result.stderr
