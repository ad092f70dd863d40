"""Issue 14, items 5 (CLI) and 6 (README): BIDS-App conventions of the command line.

* ``--skip_bids_validator`` (the BIDS-Apps spelling) is accepted;
* an option error is one line and a one-line usage hint, exit 64;
* ``--nprocs`` defaults to the CPUs this process may use (affinity, capped by
  ``SLURM_CPUS_PER_TASK``);
* the README documents every option of the parser, why ``.bidsignore`` hides the
  derivative data files, and how to install the extras from a clone; its exit-code
  table lists the codes the CLI uses.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bids_spheres.app.cli import EXIT_CODES, build_parser, main
from bids_spheres.app.config import RunConfig
from bids_spheres.app.demo import DemoInfo

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_skip_bids_validator_in_the_bids_apps_spelling(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder without dataset_description.json runs with --skip_bids_validator."""
    import shutil

    data = tmp_path / "nodesc"
    shutil.copytree(demo_small.root, data)
    for path in [data, *data.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    (data / "dataset_description.json").unlink()
    args = [str(data), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    args += ["--seeds", str(data / "code" / "demo_seeds.tsv")]
    assert main(args) == 16  # not BIDS without the flag
    capsys.readouterr()
    assert main([*args, "--skip_bids_validator"]) == 0, capsys.readouterr().err
    assert (
        build_parser().parse_args(["a", "b", "group", "--skip_bids_validator"]).skip_bids_validator
    )


@pytest.mark.parametrize(
    ("argv", "first"),
    [
        (["a", "b", "participant", "--radius", "x"], "argument --radius: 'x' is not a number"),
        (["a", "b", "participant", "--no-such-option"], "unrecognized arguments"),
        (["a"], "the following arguments are required"),
        (["a", "b", "participant", "--standardize", "zz"], "argument --standardize"),
    ],
)
def test_an_option_error_is_one_line_and_a_usage_hint(
    capsys: pytest.CaptureFixture[str], argv: list[str], first: str
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 64
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("bids_spheres: error: ") and first in lines[0]
    assert lines[1].startswith("usage: bids_spheres ") and "--help" in lines[1]


def _config(tmp_path: Path, *extra: str) -> RunConfig:
    args = build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant", *extra])
    return RunConfig.from_args(args)


def test_nprocs_defaults_to_the_cpus_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert _config(tmp_path).nprocs == 6
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert _config(tmp_path).nprocs == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")  # the affinity is the tighter bound
    assert _config(tmp_path).nprocs == 6
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "")
    assert _config(tmp_path).nprocs == 6
    assert _config(tmp_path, "--nprocs", "2").nprocs == 2  # given: as given
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert _config(tmp_path).nprocs == 1


def _options_table() -> str:
    section = README.split("| option | meaning |", 1)[1].split("\n\n", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `"))


def test_the_readme_documents_every_option() -> None:
    table = _options_table()
    documented = set(re.findall(r"`(-{1,2}[A-Za-z][A-Za-z_-]*)", table))
    missing = [
        flag
        for action in build_parser()._actions
        if not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
        if flag.startswith("--") and flag not in documented and flag not in table
    ]
    assert missing == []
    assert "--skip_bids_validator" in table and "--derivatives" in table
    assert "SLURM_CPUS_PER_TASK" in table


def test_the_readme_explains_the_bidsignore_and_installing_extras_from_a_clone() -> None:
    outputs = README.split("### Outputs", 1)[1].split("\n## ", 1)[0]
    assert ".bidsignore" in outputs and "no schema entry" in outputs
    assert "validator" in outputs
    assert 'pip install ".[dask]"' in README


def test_the_readme_exit_codes_are_the_clis() -> None:
    paragraph = README.split("Exit codes follow", 1)[1].split("\n\n", 1)[0]
    listed = {int(n) for n in re.findall(r"(?<![\d.-])(\d{1,3})(?=\s[a-z(])", paragraph)}
    listed |= {int(n) for n in re.findall(r"(\d{3})/(\d{3})/(\d{3})", paragraph)[0]}
    assert listed == set(EXIT_CODES.values())
    assert "18" not in re.findall(r"\d+", paragraph)


def test_res_native_is_carried_to_the_selection(tmp_path: Path) -> None:
    """--space X:res-native reaches discovery as such (files without res), while the
    template lookups see no resolution; plain spaces and res-N are unchanged."""
    native = _config(tmp_path, "--space", "MNI152NLin2009cAsym:res-native")
    assert (native.res, native.res_native) == (None, True)
    assert native.space_with_res == "MNI152NLin2009cAsym:res-native"
    assert _config(tmp_path, "--space", "T1w:res-native").space_with_res == "T1w:res-native"
    assert _config(tmp_path).space_with_res == "MNI152NLin2009cAsym"
    two = _config(tmp_path, "--space", "MNIPediatricAsym:cohort-1:res-2")
    assert (two.space_with_res, two.res_native) == ("MNIPediatricAsym:cohort-1:res-2", False)
