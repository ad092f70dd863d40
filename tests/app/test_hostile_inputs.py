"""Hostile input trees (issue 13): broken symlinks, symlink loops, unreadable files and
folders, odd layouts.  One bad file fails only the run that needs it (exit 1, one line
naming it) or is skipped with a warning naming it; the other runs are written."""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import run_participant as _run

from bids_spheres.app import discovery
from bids_spheres.app.cli import main
from bids_spheres.app.demo import DemoInfo
from bids_spheres.errors import UsageError

CopyDemo = Callable[[DemoInfo, Path], DemoInfo]


@pytest.fixture
def data(demo_one_run: DemoInfo, copy_demo: CopyDemo, tmp_path: Path) -> Path:
    """A private copy of the 2-subject x 1-run demo (its fMRIPrep folder is its root)."""
    return copy_demo(demo_one_run, tmp_path / "ds").fmriprep_dir


def _written(out: Path) -> list[str]:
    return sorted(p.name.split("_")[0] for p in out.glob("sub-*/func/*_timeseries.tsv"))


def _file(data: Path, subject: str, pattern: str) -> Path:
    return next((data / f"sub-{subject}" / "func").glob(pattern))


def _break(path: Path) -> None:
    """Replace ``path`` by a dangling symlink, as an un-fetched git-annex file is."""
    path.unlink()
    path.symlink_to("../../.git/annex/objects/XX/YY/MD5E-s1--0.nii.gz/MD5E-s1--0.nii.gz")


# ---------------------------------------------------------------- item 3


def test_broken_bold_symlink_fails_its_run_alone(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bold = _file(data, "02", "*MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    _break(bold)
    assert _run(data, tmp_path / "out") == 1
    assert _written(tmp_path / "out") == ["sub-01"]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("bids_spheres: run failed")]
    assert len(lines) == 1
    assert f"sub-02/func/{bold.name} is a broken symlink" in lines[0]
    assert "datalad get" in lines[0]
    assert "internal error" not in err


def test_confounds_symlink_loop_fails_its_run_alone(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    confounds = _file(data, "02", "*_desc-confounds_timeseries.tsv")
    confounds.unlink()
    other = confounds.with_name("loop_partner")
    confounds.symlink_to(other.name)
    other.symlink_to(confounds.name)
    assert _run(data, tmp_path / "out") == 1
    assert _written(tmp_path / "out") == ["sub-01"]
    err = capsys.readouterr().err
    assert f"sub-02/func/{confounds.name} is a symlink loop; fix or remove the link" in err
    assert "internal error" not in err


def test_unreadable_sidecar_fails_its_run_alone(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, which reads a chmod-000 file: make reading this one sidecar fail
    # with the PermissionError an ordinary user gets.  The indexing child is forked and
    # inherits the patch.
    sidecar = _file(data, "02", "*MNI152NLin2009cAsym_desc-preproc_bold.json")
    read_bytes = pathlib.Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self.name == sidecar.name:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    assert _run(data, tmp_path / "out") == 1
    assert _written(tmp_path / "out") == ["sub-01"]
    err = capsys.readouterr().err
    assert f"sidecar {sidecar} cannot be read (Permission denied)" in err
    assert "internal error" not in err


def test_broken_link_no_run_needs_is_skipped_with_a_warning(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    func = data / "sub-02" / "func"
    (func / "sub-02_task-other_bold.json").symlink_to("../../.git/annex/objects/x.json")
    (func / "sub-02_task-x_bold.nii.gz").symlink_to("sub-02_task-x_bold.nii.gz")  # loop
    layout = discovery.make_layout(data, tmp_path / "db")
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        runs = discovery.collect_runs(layout)
    assert [r.problem for r in runs] == [None, None]
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert warnings == [
        "skipped sub-02/func/sub-02_task-other_bold.json is a broken symlink (an un-fetched "
        "DataLad/git-annex file? run `datalad get`)",
        "skipped sub-02/func/sub-02_task-x_bold.nii.gz is a symlink loop; fix or remove the link",
    ]
    assert os.path.islink(func / "sub-02_task-x_bold.nii.gz")


# ---------------------------------------------------------------- item 13 (filter file depth)


def test_deeply_nested_filter_file_is_a_usage_error(
    demo_one_run: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "filters.json"
    deep.write_text('{"bold": {"task": ' + "[" * 30_000 + "]" * 30_000 + "}}")
    assert _run(demo_one_run.fmriprep_dir, tmp_path / "out", "--bids-filter-file", str(deep)) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"bids_spheres: error: --bids-filter-file {deep} nests JSON objects or lists 30002 "
        'levels deep, more than the 8 accepted; a filter is {"bold": {"entity": value or '
        "[values]}}"
    ]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- item 10 (TemplateFlow cohort)


def _two_cohorts(data: Path) -> Path:
    """Store every MNI152NLin2009cAsym file of ``data`` as MNIPediatricAsym cohort 1 and 2
    (fMRIPrep's ``--output-spaces MNIPediatricAsym:cohort-1:res-2 ...:cohort-2:res-2``);
    return a copy of the demo seeds without their ``Space`` sidecar."""
    for path in sorted(data.glob("sub-*/func/*space-MNI152NLin2009cAsym_*")):
        for cohort in ("1", "2"):
            name = path.name.replace(
                "space-MNI152NLin2009cAsym_", f"space-MNIPediatricAsym_cohort-{cohort}_res-2_"
            )
            path.with_name(name).write_bytes(path.read_bytes())
        path.unlink()
    seeds = data.parent / "seeds.tsv"
    seeds.write_bytes((data / "code" / "demo_seeds.tsv").read_bytes())
    return seeds


def test_two_cohorts_are_two_spaces_not_a_duplicate(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = _two_cohorts(data)
    layout = discovery.make_layout(data, tmp_path / "db")
    runs = discovery.collect_runs(layout, space="MNIPediatricAsym:res-2:cohort-2")
    assert [r.entities.get("cohort") for r in runs] == ["2", "2"]
    assert all("_cohort-2_res-2_desc-brain_mask" in r.mask.name for r in runs if r.mask)
    assert all(r.mask is not None for r in runs)
    with pytest.raises(UsageError) as err:
        discovery.collect_runs(layout, space="MNIPediatricAsym")
    assert "several cohorts for run sub-01_task-rest_run-1 (cohort-1:res-2, cohort-2:res-2)" in (
        str(err.value)
    )
    assert "choose one with --space MNIPediatricAsym:cohort-1:res-2" in str(err.value)

    out = tmp_path / "out"
    argv = ["--seeds", str(seeds), "--space", "MNIPediatricAsym:cohort-1:res-2"]
    code = main([str(data), str(out), "participant", "--work-dir", str(tmp_path / "w"), *argv])
    assert code == 0, capsys.readouterr().err
    # cohort is kept, in the BIDS schema entity order (sub, ses, cohort, ..., space, atlas, res)
    assert sorted(p.name for p in out.glob("sub-*/func/*_timeseries.tsv")) == [
        f"sub-{s}_cohort-1_task-rest_run-1_space-MNIPediatricAsym_atlas-seeds_res-2_"
        "desc-simple_timeseries.tsv"
        for s in ("01", "02")
    ]
    code = main([str(data), str(tmp_path / "o2"), "participant", "--seeds", str(seeds)])
    assert code == 66  # the default space is absent, not "the same run stored twice"


def test_space_modifiers_parse_cohort_and_res() -> None:
    from bids_spheres.app.config import parse_space

    assert parse_space("MNIPediatricAsym:cohort-1:res-2") == ("MNIPediatricAsym", "1", "2")
    assert parse_space("MNIPediatricAsym:res-2:cohort-1") == ("MNIPediatricAsym", "1", "2")
    assert parse_space("MNI152NLin2009cAsym") == ("MNI152NLin2009cAsym", None, None)
    for bad in ("X:cohort-1:cohort-2", "X:cohort-", "X:den-91k", "X/Y:res-2"):
        with pytest.raises(UsageError, match="is not valid; give a template name"):
            parse_space(bad)


# ---------------------------------------------------------------- item 12 (unreadable folder)


@pytest.fixture
def unreadable_func(data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``sub-02/func`` of ``data`` as a ``chmod 000`` folder looks to an ordinary user.

    Tests run as root, which lists and enters any folder, so listing the folder
    (``os.scandir``) and reaching anything inside it (``os.stat``, what
    ``Path.exists`` calls) raise the ``PermissionError`` a user gets.  The indexing
    child is forked and inherits the patch.
    """
    denied = data / "sub-02" / "func"
    prefix = f"{denied}/"
    scandir, stat = os.scandir, os.stat

    def refuse(path: object) -> None:
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        if text.rstrip("/") == str(denied) or text.startswith(prefix):
            raise PermissionError(13, "Permission denied", text)

    def guarded_scandir(path: object = ".") -> object:
        refuse(path)
        return scandir(path)  # type: ignore[arg-type]

    def guarded_stat(path: object, *args: object, **kwargs: object) -> object:
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        if text.startswith(prefix):
            refuse(path)
        return stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", guarded_scandir)
    monkeypatch.setattr(os, "stat", guarded_stat)
    return denied


def test_unreadable_func_folder_skips_its_runs_with_a_warning(
    data: Path, unreadable_func: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        layout = discovery.make_layout(data, tmp_path / "db")
        runs = discovery.collect_runs(layout)
    assert [r.label for r in runs] == ["sub-01_task-rest_run-1"]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read the folder sub-02/func (Permission denied); its runs are skipped -- fix "
        "its permissions (e.g. chmod a+rX) to include them"
    ]
    assert _run(data, tmp_path / "out") == 0
    assert _written(tmp_path / "out") == ["sub-01"]


def test_unreadable_func_folder_is_named_when_nothing_else_is_left(
    data: Path, unreadable_func: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(data, tmp_path / "out", "--participant-label", "02") == 66
    err = capsys.readouterr().err
    assert "participant(s) 02 not found under" in err
    assert "cannot read the folder sub-02/func (Permission denied)" in err
    assert "work" not in err.split("error:")[-1]


# ---------------------------------------------------------------- item 16


def test_folder_named_like_a_bold_file_is_ignored_with_a_warning(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bold = _file(data, "02", "*MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    bold.unlink()
    bold.mkdir()
    (bold / "content.nii.gz").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        runs = discovery.collect_runs(discovery.make_layout(data, tmp_path / "db"))
    assert [r.label for r in runs] == ["sub-01_task-rest_run-1"]
    assert [r.getMessage() for r in caplog.records] == [
        f"sub-02/func/{bold.name} is a folder, not a file; ignored -- remove or rename it"
    ]


def test_all_runs_skipped_is_not_success(
    demo_one_run: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # scrubbing at a framewise displacement of 0.001 mm leaves too few volumes in both runs
    assert (
        _run(
            demo_one_run.fmriprep_dir,
            tmp_path / "out",
            "--denoise-strategy",
            "scrubbing",
            "--fd-threshold",
            "0.001",
        )
        == 1
    )
    assert _written(tmp_path / "out") == []
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("bids_spheres:")] == [
        "bids_spheres: no run written: all 2 selected run(s) were skipped (see the warnings above)"
    ]


# ---------------------------------------------------------------- item 17 (multi-echo)


def test_per_echo_bolds_take_the_mask_and_confounds_of_their_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fMRIPrep --me-output-echos: echo-N BOLDs (and sidecars) next to the optimally combined
    # one, and one mask / confounds file per run, without echo
    func = data / "sub-02" / "func"
    for path in sorted(func.glob("*MNI152NLin2009cAsym_desc-preproc_bold.*")):
        for echo in ("1", "2"):
            name = path.name.replace("_run-1_", f"_run-1_echo-{echo}_")
            path.with_name(name).write_bytes(path.read_bytes())
    runs = discovery.collect_runs(discovery.make_layout(data, tmp_path / "db"))
    assert [r.label for r in runs] == [
        "sub-01_task-rest_run-1",
        "sub-02_task-rest_run-1_echo-1",
        "sub-02_task-rest_run-1_echo-2",
        "sub-02_task-rest_run-1",
    ]
    mask = _file(data, "02", "*MNI152NLin2009cAsym_desc-brain_mask.nii.gz")
    confounds = _file(data, "02", "*_desc-confounds_timeseries.tsv")
    assert [(r.mask, r.confounds) for r in runs[1:]] == [(mask, confounds)] * 3
    assert [r.sidecar.name.count("echo-2") for r in runs[1:]] == [0, 1, 0]

    out = tmp_path / "out"
    assert _run(data, out) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("sub-02/func/*_timeseries.tsv")) == sorted(
        f"sub-02_task-rest_run-1{echo}_space-MNI152NLin2009cAsym_atlas-demoseeds_desc-simple_"
        "timeseries.tsv"
        for echo in ("", "_echo-1", "_echo-2")
    )
