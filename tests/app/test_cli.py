"""Command-line parsing and exit codes that need no dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bids_spheres import __version__
from bids_spheres.app.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bids_spheres {__version__}"


def test_help_states_each_real_default_once() -> None:
    """--help names the defaults that mean something, and no "(default: None)" or the
    store_false default of a --no-* flag ("--no-reports ... (default: True)" read as
    "no reports by default")."""
    text = " ".join(build_parser().format_help().split())
    for bogus in ("(default: None)", "(default: True)", "(default: False)", "(default: 0)"):
        assert bogus not in text
    for option, default in (
        ("--space SPACE", "(default: MNI152NLin2009cAsym)"),
        ("--seeds SEEDS", "(default: power2011)"),
        ("--radius RADIUS", "default: 5.0)"),
        ("--mask MASK", "(default: fmriprep)"),
        ("--min-coverage MIN_COVERAGE", "(default: 0.5)"),
        ("--denoise-strategy DENOISE_STRATEGY", "(default: simple)"),
        ("--standardize {zscore,zscore_sample,psc,none}", "(default: zscore_sample)"),
        ("--max-mean-fd MAX_MEAN_FD", "(default: 0.5)"),
        ("--min-volumes MIN_VOLUMES", "(default: 50)"),
        ("--high-pass HZ", "(default: none)"),
        ("--low-pass HZ", "(default: none)"),
        ("--smoothing-fwhm MM", "(default: no smoothing)"),
        ("--fd-threshold FD_THRESHOLD", "(default: the strategy's)"),
    ):
        after = text.split(f"{option} ", 1)[1].split(" --", 1)[0]
        assert default in after, (option, after)
    no_reports = text.split("--no-reports ", 1)[1].split(" --", 1)[0]
    assert "default" not in no_reports


def test_usage_error_exits_64(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), str(tmp_path / "out"), "participant", "--radius", "-3"])
    assert info.value.code == 64
    assert "'-3' must be a non-negative number" in capsys.readouterr().err


def test_missing_positionals_exit_64() -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 64


def test_unknown_level_exits_17(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([str(tmp_path), str(tmp_path / "out"), "session"]) == 17
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown analysis level 'session'" in err


def test_both_participant_label_spellings_and_prefix() -> None:
    parser = build_parser()
    a = parser.parse_args(["in", "out", "participant", "--participant-label", "sub-01", "02"])
    b = parser.parse_args(["in", "out", "participant", "--participant_label", "01", "sub-02"])
    assert a.participant_label == b.participant_label == ["01", "02"]


@pytest.mark.parametrize("label", ["../x", "01/..", "a b", "sub-", "é1"])
def test_unsafe_labels_are_refused(label: str) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["in", "out", "participant", "--participant-label", label])
    assert info.value.code == 64


def test_run_takes_numbers_only(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["in", "out", "group", "--run", "run-01", "2"])
    assert args.run == ["01", "2"]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["in", "out", "group", "--run", "a"])
    assert info.value.code == 64
    assert "'a' is not a run number" in capsys.readouterr().err


def test_high_pass_must_be_below_low_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(
        [
            str(tmp_path),
            str(tmp_path / "out"),
            "participant",
            "--high-pass",
            "0.1",
            "--low-pass",
            "0.05",
        ]
    )
    assert code == 64
    assert "--high-pass 0.1 Hz must be lower than --low-pass 0.05 Hz" in capsys.readouterr().err


def test_output_dir_equal_to_bids_dir_is_refused(tmp_path: Path) -> None:
    assert main([str(tmp_path), str(tmp_path), "participant"]) == 64


def test_missing_bids_dir_exits_66(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    assert code == 66
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope does not exist" in err[0]


def test_not_a_bids_dataset_exits_16(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "participant"]) == 16
    assert "--skip-bids-validator" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bids_spheres", str(tmp_path), str(tmp_path / "o"), "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 17
    assert "Traceback" not in done.stderr
