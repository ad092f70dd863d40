"""Issue 14, items 1 and 2: output inside the input, and settings refused before any work.

* ``bids_spheres ds ds/derivatives/bids_spheres participant`` works with the default
  work dir, in both layouts; our own outputs are never indexed; the inputs stay
  untouched; a refused start leaves nothing behind (no ``.work``, no output folder).
* Settings that would fail every run are refused once, with one line and the README's
  exit code, before indexing where no run is needed (seeds, strategy) and before any
  run otherwise (overlap on the grids, TemplateFlow, AROMA, space); a pre-run check
  never refuses what the runs would accept.
* One exit code (66) for every kind of "nothing selected".
* The group level with no usable run exits non-zero naming the thresholds; its QC
  tables are still written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import run_participant

from bids_spheres.app.cli import main
from bids_spheres.app.demo import DemoInfo, build_dataset


def _tree(root: Path, skip: str | None = None) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) of every path under ``root`` (minus ``skip`` and, when
    skipping, the folders that hold it: creating it changes their modification time)."""
    out = {}
    holders = {p.as_posix() for p in Path(skip).parents} if skip else set()
    for path in [root, *root.rglob("*")]:
        rel = path.relative_to(root).as_posix()
        if skip and (rel == skip or rel.startswith(f"{skip}/") or rel in holders):
            continue
        st = path.lstat()
        out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def _errors(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if "error" in line]


def _own_seeds(data: Path) -> list[str]:
    return ["--seeds", str(data / "code" / "demo_seeds.tsv")]


# --------------------------------------------------------------------- item 1


def test_output_inside_the_fmriprep_dataset_with_the_default_work_dir(
    demo_small: DemoInfo,
    copy_demo: Callable[[DemoInfo, Path], DemoInfo],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The usual BIDS-App place, no --work-dir: written, rerun skips, index reused."""
    data = copy_demo(demo_small, tmp_path / "ds").root
    before = _tree(data, skip="derivatives")
    out = data / "derivatives" / "bids_spheres"
    assert main([str(data), str(out), "participant", *_own_seeds(data)]) == 0, (
        capsys.readouterr().err
    )
    written = sorted(out.glob("sub-01/func/*_timeseries.tsv"))
    assert len(written) == 1
    assert _tree(data, skip="derivatives") == before  # the inputs are untouched
    indexes = sorted(p.name for p in (out / ".work" / "bids_db").glob("pybids-*"))
    assert len(indexes) == 1
    # the rerun finds the run finished; our outputs (inside the indexed dataset) are not
    # scanned, so the index fingerprint is unchanged and the same index is reused
    capsys.readouterr()
    assert main([str(data), str(out), "participant", *_own_seeds(data), "-v"]) == 0
    assert "1 finished" in capsys.readouterr().err
    assert sorted(p.name for p in (out / ".work" / "bids_db").glob("pybids-*")) == indexes


def test_output_inside_a_raw_dataset_whose_fmriprep_folder_has_another_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """raw/derivatives/fmriprep-23.2.0 + raw/derivatives/bids_spheres: our own
    dataset_description (GeneratedBy bids_spheres, then fMRIPrep) is not taken for a
    second fMRIPrep dataset on the rerun."""
    info = build_dataset(
        tmp_path / "raw", layout="raw+derivatives", n_subjects=1, n_runs=1, n_volumes=40
    )
    fmriprep = info.fmriprep_dir.rename(info.fmriprep_dir.with_name("fmriprep-23.2.0"))
    before = _tree(info.root, skip="derivatives/bids_spheres")
    out = info.root / "derivatives" / "bids_spheres"
    args = [str(info.root), str(out), "participant", *_own_seeds(info.root)]
    assert main(args) == 0, capsys.readouterr().err
    assert main(args) == 0, capsys.readouterr().err
    assert len(sorted(out.glob("sub-01/func/*_timeseries.tsv"))) == 1
    assert _tree(info.root, skip="derivatives/bids_spheres") == before
    assert fmriprep.is_dir()


def test_our_output_folder_is_never_indexed(demo_small: DemoInfo, tmp_path: Path) -> None:
    """Even inside a folder pybids would index (sub-01/), our files stay out of the index."""
    from bids_spheres.app.discovery import make_layout

    data = tmp_path / "ds"
    shutil.copytree(demo_small.root, data)
    for path in [data, *data.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    out = data / "sub-01" / "func" / "spheres"
    run_dir = out / "sub-01" / "func"
    run_dir.mkdir(parents=True)
    (run_dir / "sub-01_task-rest_desc-x_timeseries.tsv").write_text("a\n1\n")
    (out / "sub-01_task-rest_desc-y_timeseries.tsv").write_text("a\n1\n")
    layout = make_layout(data, tmp_path / "db", own_dirs=[out])
    indexed = layout.get(return_type="filename")
    assert indexed and not [p for p in indexed if str(out) in p]
    # the database may go inside our own output folder, not elsewhere in the input
    make_layout(data, out / ".work" / "db", own_dirs=[out])


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--participant-label", "99"], 66),
        (["--task", "nback"], 66),
        (["--seeds", "nosuchset"], 66),
        (["--denoise-strategy", "aroma"], 66),
        (["--seeds", "power2011", "--radius", "20"], 64),
    ],
)
def test_a_refused_start_leaves_nothing_in_the_input(
    demo_small: DemoInfo,
    copy_demo: Callable[[DemoInfo, Path], DemoInfo],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    code: int,
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds").root
    before = _tree(data)
    out = data / "derivatives" / "bids_spheres"
    got = main([str(data), str(out), "participant", *_own_seeds(data), *extra])
    err = capsys.readouterr().err
    assert got == code, err
    assert len(_errors(err)) == 1
    assert _tree(data) == before  # no derivatives/, no .work/
    assert not (data / "derivatives").exists()


def test_nothing_is_created_before_the_selection_and_checks_passed(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output and work folders outside the input: a refused start creates neither."""
    out, work = tmp_path / "out", tmp_path / "work"
    for extra in (["--participant-label", "99"], ["--run", "7"], ["--seeds", "nosuch.tsv"]):
        args = [str(demo_small.root), str(out), "participant", "-w", str(work), *extra]
        assert main(args) == 66
        assert not out.exists() and not work.exists()
    capsys.readouterr()


# --------------------------------------------------------------------- item 2


@pytest.mark.parametrize(
    "case", ["missing seeds", "bad seeds", "missing strategy", "bad strategy"]
)
def test_seeds_and_strategy_are_checked_before_indexing(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """An existing (empty) database folder stays empty: nothing was indexed."""
    bad_seeds = tmp_path / "bad_seeds.tsv"
    bad_seeds.write_text("name\tx\ty\nA\t1\t2\n")  # no z column
    bad_strategy = tmp_path / "bad_strategy.json"
    bad_strategy.write_text('{"name": "x", "motion": "lots"}')
    extra = {
        "missing seeds": ["--seeds", str(tmp_path / "missing.tsv")],
        "bad seeds": ["--seeds", str(bad_seeds)],
        "missing strategy": ["--denoise-strategy", str(tmp_path / "missing.json")],
        "bad strategy": ["--denoise-strategy", str(bad_strategy)],
    }[case]
    db = tmp_path / "db"
    db.mkdir()
    args = [str(demo_small.root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    code = main([*args, "--bids-database-dir", str(db), *extra])
    err = capsys.readouterr().err
    assert code in (64, 65, 66), err
    assert len(_errors(err)) == 1 and "Traceback" not in err
    assert list(db.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_overlap_is_refused_once_before_any_run(
    demo_dataset: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Power 264 at 20 mm overlaps on every run's grid: one line, exit 64, no run tried."""
    out = tmp_path / "out"
    code = run_participant(demo_dataset.root, out, "--seeds", "power2011", "--radius", "20")
    err = capsys.readouterr().err
    assert code == 64, err
    errors = _errors(err)
    assert len(errors) == 1
    assert "spheres overlap in every selected run (4;" in errors[0]
    assert "--allow-overlap" in errors[0] and "power001/" in errors[0]
    assert "FAILED" not in err and "run failed" not in err
    assert not out.exists()


def test_overlap_outside_the_mask_is_not_refused(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two spheres that share voxels of the grid only outside every brain mask: the run
    accepts them (their voxels are masked away), so the pre-run check must too."""
    seeds = tmp_path / "seeds.tsv"
    text = (demo_small.root / "code" / "demo_seeds.tsv").read_text()
    # the demo brain is an ellipsoid reaching z = 80 mm; the grid reaches z = 114 mm
    seeds.write_text(text.rstrip("\n") + "\nhighA\t0\t-18\t100\t4\tX\nhighB\t0\t-18\t104\t4\tX\n")
    shutil.copyfile(demo_small.root / "code" / "demo_seeds.json", tmp_path / "seeds.json")
    out = tmp_path / "out"
    code = main(
        [
            str(demo_small.root),
            str(out),
            "participant",
            "--seeds",
            str(seeds),
            "-w",
            str(tmp_path / "w"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(next(out.glob("sub-01/func/*_timeseries.tsv")), sep="\t")
    assert table[["highA", "highB"]].isna().all().all()
    # with --mask none the same pair overlaps on the grid: refused before the run
    code = main(
        [
            str(demo_small.root),
            str(tmp_path / "out2"),
            "participant",
            "--seeds",
            str(seeds),
            "-w",
            str(tmp_path / "w"),
            "--mask",
            "none",
        ]
    )
    err = capsys.readouterr().err
    assert code == 64 and "highA/highB" in err, err
    assert not (tmp_path / "out2").exists()


def test_seeds_at_the_same_place_with_mask_none_are_refused_before_indexing(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = tmp_path / "twins.tsv"
    seeds.write_text("name\tx\ty\tz\nA\t0\t-52\t26\nB\t0\t-52\t26\nC\t0\t52\t-6\n")
    db = tmp_path / "db"
    db.mkdir()
    args = [str(demo_small.root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    code = main([*args, "--seeds", str(seeds), "--mask", "none", "--bids-database-dir", str(db)])
    err = capsys.readouterr().err
    assert code == 64, err
    assert "A/B" in _errors(err)[0] and "--allow-overlap" in err
    assert list(db.iterdir()) == []


def test_template_mask_offline_is_refused_once_before_any_run(
    demo_dataset: DemoInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Four runs, TemplateFlow has no such template locally: one line, 66, no run."""
    home = tmp_path / "templateflow"
    (home / "tpl-Other").mkdir(parents=True)
    (home / "tpl-Other" / "template_description.json").write_text("{}")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    out = tmp_path / "out"
    code = run_participant(demo_dataset.root, out, "--mask", "template")
    err = capsys.readouterr().err
    assert code == 66, err
    assert len(_errors(err)) == 1 and "TEMPLATEFLOW_HOME" in _errors(err)[0]
    assert "FAILED" not in err and not out.exists()


def test_aroma_without_aroma_outputs_is_refused_before_any_run(
    demo_dataset: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = run_participant(demo_dataset.root, out, "--denoise-strategy", "aroma")
    err = capsys.readouterr().err
    assert code == 66, err
    (line,) = _errors(err)
    assert "desc-smoothAROMAnonaggr_bold" in line and "none of the 4 selected run(s)" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--participant-label", "99"],
        ["--space", "MNI152NLin6Asym"],
        ["--space", "MNI152NLin2009cAsym:res-2"],
        ["--task", "nback"],
        ["--run", "9"],
        ["--session-label", "1"],
    ],
)
def test_one_exit_code_for_nothing_selected(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    args = [str(demo_small.root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    code = main([*args, "--seeds", "power2011", *extra])
    err = capsys.readouterr().err
    assert code == 66, err
    assert len(_errors(err)) == 1 and extra[1] in err.replace("run 9", "9")


def test_group_with_no_usable_run_exits_non_zero_naming_the_thresholds(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run_participant(demo_small.root, out) == 0
    capsys.readouterr()
    args = [str(demo_small.root), str(out), "group", "-w", str(tmp_path / "work")]
    code = main([*args, "--max-mean-fd", "0.001", "--min-volumes", "20"])
    err = capsys.readouterr().err
    assert code == 1, err
    (line,) = _errors(err)
    assert "no usable run for atlas-" in line
    assert "all 1 run(s) excluded (1 with mean FD > --max-mean-fd 0.001 mm)" in line
    runs = pd.read_csv(next((out / "group").glob("*_runs.tsv")), sep="\t")
    assert list(runs["usable"]) == ["no"]
    assert (out / "group" / "report.html").is_file()
    # usable again with a looser threshold: exit 0
    assert main([*args, "--max-mean-fd", "5", "--min-volumes", "20"]) == 0


def test_group_with_nothing_to_summarize_creates_nothing(
    demo_small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never_written"
    assert main([str(demo_small.root), str(out), "group"]) == 66
    assert len(_errors(capsys.readouterr().err)) == 1
    assert not out.exists()
    assert not os.path.lexists(out / ".work")
