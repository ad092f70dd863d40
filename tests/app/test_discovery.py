"""Tests of bids_spheres.app.discovery on datasets written by bids_spheres.app.demo."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_spheres.app.demo import SPACE, DemoInfo, build_dataset
from bids_spheres.app.discovery import (
    RunInputs,
    collect_runs,
    find_fmriprep_dir,
    list_subjects,
    make_layout,
)
from bids_spheres.app.filters import (
    MAX_FILTER_FILE_BYTES,
    load_filter_file,
    validate_bids_filters,
)
from bids_spheres.errors import (
    DataError,
    MissingInputError,
    NothingSelectedError,
    UsageError,
)

MNI = f"space-{SPACE}"


@pytest.fixture(scope="module")
def deriv(demo_dataset: DemoInfo) -> DemoInfo:
    """fMRIPrep layout, 2 subjects x 2 runs: the shared, read-only standard demo
    (tests/conftest.py)."""
    return demo_dataset


@pytest.fixture(scope="module")
def with_sessions(tmp_path_factory: pytest.TempPathFactory) -> DemoInfo:
    """Raw dataset with derivatives/fmriprep, 2 subjects x 2 sessions x 1 run."""
    return build_dataset(
        tmp_path_factory.mktemp("sessions") / "ds",
        layout="raw+derivatives",
        n_runs=1,
        sessions=["1", "2"],
        n_volumes=40,
    )


@pytest.fixture
def small(demo_small: DemoInfo, copy_demo, tmp_path: Path) -> DemoInfo:
    """A fresh one-run dataset the test may modify: a private copy of the shared
    ``demo_small`` (1 subject x 1 run x 40 volumes, tests/conftest.py)."""
    return copy_demo(demo_small, tmp_path / "ds")


def _labels(runs: list[RunInputs]) -> list[str]:
    return [r.label for r in runs]


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def _run_prefix(info: DemoInfo, sub: str = "01", run: int = 1) -> Path:
    return info.fmriprep_dir / f"sub-{sub}" / "func" / f"sub-{sub}_task-rest_run-{run}"


# --------------------------------------------------------------------------- find_fmriprep_dir


def test_find_in_the_three_layouts(deriv: DemoInfo, with_sessions: DemoInfo, tmp_path: Path):
    assert find_fmriprep_dir(deriv.root) == (None, deriv.root)
    raw = with_sessions.root
    assert find_fmriprep_dir(raw) == (raw, raw / "derivatives" / "fmriprep")
    assert find_fmriprep_dir(raw, deriv.root) == (raw, deriv.root)
    assert find_fmriprep_dir(str(raw), str(deriv.root)) == (raw, deriv.root)

    # Another derivatives/* folder whose description names fMRIPrep.
    other = tmp_path / "raw"
    (other / "derivatives" / "fmriprep-23").mkdir(parents=True)
    (other / "dataset_description.json").write_text('{"Name": "r", "BIDSVersion": "1.9.0"}')
    shutil.copy(deriv.root / "dataset_description.json", other / "derivatives" / "fmriprep-23")
    assert find_fmriprep_dir(other) == (other, other / "derivatives" / "fmriprep-23")

    (other / "derivatives" / "fmriprep-24").mkdir()
    shutil.copy(deriv.root / "dataset_description.json", other / "derivatives" / "fmriprep-24")
    with pytest.raises(UsageError, match=r"holds several fMRIPrep derivatives .*--derivatives"):
        find_fmriprep_dir(other)


def test_find_accepts_preproc_outputs_without_description(tmp_path: Path) -> None:
    func = tmp_path / "out" / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    (func / f"sub-01_ses-1_task-rest_{MNI}_desc-preproc_bold.nii.gz").touch()
    assert find_fmriprep_dir(tmp_path / "out") == (None, tmp_path / "out")


def test_find_errors(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "sub-01" / "func").mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "r", "BIDSVersion": "1.9.0"}')
    with pytest.raises(MissingInputError) as err:
        find_fmriprep_dir(raw)
    assert str(err.value) == (
        f"bids_dir {raw} is a raw BIDS dataset with no fMRIPrep derivatives (looked in "
        f"{raw}/derivatives/fmriprep and {raw}/derivatives/*/dataset_description.json); pass "
        "--derivatives /path/to/fmriprep"
    )
    assert err.value.exit_code == 66

    with pytest.raises(MissingInputError, match=f"bids_dir {tmp_path}/nope does not exist"):
        find_fmriprep_dir(tmp_path / "nope")
    with pytest.raises(MissingInputError, match=f"--derivatives {raw}/sub-01 holds no fMRIPrep"):
        find_fmriprep_dir(raw, raw / "sub-01")
    with pytest.raises(MissingInputError, match=r"--derivatives .*/missing does not exist"):
        find_fmriprep_dir(raw, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="holds neither a BIDS dataset nor fMRIPrep"):
        find_fmriprep_dir(tmp_path / "empty")
    (raw / "dataset_description.json").write_text("{not json")
    with pytest.raises(DataError, match=f"{raw}/dataset_description.json is not valid JSON"):
        find_fmriprep_dir(raw)


# --------------------------------------------------------------------------- indexing


def test_collect_runs_reads_mni_preproc_only(deriv: DemoInfo) -> None:
    layout = make_layout(deriv.fmriprep_dir, None)
    indexed = [Path(p).relative_to(deriv.root) for p in layout.get(return_type="filename")]
    names = " ".join(str(p) for p in indexed)
    decoys = ["anat/", "figures/", "log/", "logs/", "code/", ".html", ".dtseries.nii", "_xfm"]
    for decoy in [*decoys, ".h5", ".gii", "boldref", ".svg", ".toml"]:
        assert decoy not in names
    # dataset_description.json + per run: MNI and T1w bold, mask and bold JSON, the fsLR
    # JSON sidecar, the confounds TSV and JSON.
    assert len(indexed) == 1 + 4 * 9

    runs = collect_runs(layout)
    assert _labels(runs) == [
        "sub-01_task-rest_run-1",
        "sub-01_task-rest_run-2",
        "sub-02_task-rest_run-1",
        "sub-02_task-rest_run-2",
    ]
    first = runs[0]
    prefix = _run_prefix(deriv)
    assert first == RunInputs(
        bold=Path(f"{prefix}_{MNI}_desc-preproc_bold.nii.gz"),
        mask=Path(f"{prefix}_{MNI}_desc-brain_mask.nii.gz"),
        confounds=Path(f"{prefix}_desc-confounds_timeseries.tsv"),
        confounds_json=Path(f"{prefix}_desc-confounds_timeseries.json"),
        t_r=2.0,
        entities={"subject": "01", "task": "rest", "run": "1", "space": SPACE},
        sidecar=Path(f"{prefix}_{MNI}_desc-preproc_bold.json"),
        fmriprep_root=deriv.root,
        aroma_bold=None,
        t_r_source=Path(f"{prefix}_{MNI}_desc-preproc_bold.json"),
    )
    assert list(first.entities) == ["subject", "task", "run", "space"]
    assert [r.bold for r in runs] == list(deriv.bold_files)
    assert list_subjects(layout) == ["01", "02"]
    assert len({first, runs[0]}) == 1  # frozen and hashable

    t1w = collect_runs(layout, space="T1w")
    assert t1w[0].bold.name == "sub-01_task-rest_run-1_space-T1w_desc-preproc_bold.nii.gz"
    assert t1w[0].mask.name == "sub-01_task-rest_run-1_space-T1w_desc-brain_mask.nii.gz"
    assert t1w[0].confounds == first.confounds


def test_raw_plus_derivatives_with_sessions(with_sessions: DemoInfo) -> None:
    raw, fmriprep = find_fmriprep_dir(with_sessions.root)
    assert raw == with_sessions.root
    layout = make_layout(fmriprep, None)
    runs = collect_runs(layout)
    assert _labels(runs) == [
        "sub-01_ses-1_task-rest_run-1",
        "sub-01_ses-2_task-rest_run-1",
        "sub-02_ses-1_task-rest_run-1",
        "sub-02_ses-2_task-rest_run-1",
    ]
    assert all(r.fmriprep_root == fmriprep and r.mask and r.confounds_json for r in runs)
    assert runs[1].entities == {
        "subject": "01",
        "session": "2",
        "task": "rest",
        "run": "1",
        "space": SPACE,
    }
    for label in ("sub-02", "02", ["02"]):
        assert _labels(collect_runs(layout, participant_label=label))[0].startswith("sub-02_ses-1")
    assert _labels(collect_runs(layout, session_label="ses-2", task="rest", run=1)) == [
        "sub-01_ses-2_task-rest_run-1",
        "sub-02_ses-2_task-rest_run-1",
    ]
    assert len(collect_runs(layout, run=["run-1"])) == 4


def test_read_only_inputs_stay_untouched(tmp_path: Path) -> None:
    info = build_dataset(
        tmp_path / "ds", layout="raw+derivatives", n_subjects=1, n_runs=1, n_volumes=40
    )
    before = _snapshot(info.root)
    for path in [info.root, *info.root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        raw, fmriprep = find_fmriprep_dir(info.root)
        layout = make_layout(fmriprep, tmp_path / "work" / "db", input_dirs=[raw])
        runs = collect_runs(layout)
        again = collect_runs(make_layout(fmriprep, tmp_path / "work" / "db"))
        with pytest.raises(UsageError, match="is inside the input dataset"):
            make_layout(fmriprep, info.root / "work", input_dirs=[raw])
    finally:
        for path in [info.root, *info.root.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    after = _snapshot(info.root)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}
    assert len(runs) == 1 and runs == again
    assert [p.name[:7] for p in (tmp_path / "work" / "db").iterdir() if p.is_dir()] == ["pybids-"]


def test_database_is_reused_and_refreshed(small: DemoInfo, tmp_path: Path) -> None:
    db = tmp_path / "work" / "pybids"
    start = time.perf_counter()
    first = make_layout(small.fmriprep_dir, db)
    build_time = time.perf_counter() - start
    (folder,) = [p for p in db.iterdir() if p.is_dir()]
    sqlite = folder / "layout_index.sqlite"
    stamp = sqlite.stat()

    start = time.perf_counter()
    second = make_layout(small.fmriprep_dir, db)
    load_time = time.perf_counter() - start
    assert load_time < build_time and load_time < 5
    assert sqlite.stat().st_mtime_ns == stamp.st_mtime_ns and sqlite.stat().st_ino == stamp.st_ino
    assert [p for p in db.iterdir() if p.is_dir()] == [folder]
    assert collect_runs(second) == collect_runs(first)

    # A new run appears (fMRIPrep finished more work): the index is rebuilt, not reused.
    prefix = _run_prefix(small)
    for name in (f"{MNI}_desc-preproc_bold.nii.gz", f"{MNI}_desc-preproc_bold.json"):
        shutil.copy(f"{prefix}_{name}", str(prefix).replace("run-1", "run-2") + f"_{name}")
    third = make_layout(small.fmriprep_dir, db)
    assert _labels(collect_runs(third)) == ["sub-01_task-rest_run-1", "sub-01_task-rest_run-2"]
    assert len([p for p in db.iterdir() if p.is_dir()]) == 2

    # reset rebuilds in place.
    rebuilt = make_layout(small.fmriprep_dir, db, reset=True)
    assert len(collect_runs(rebuilt)) == 2
    assert len([p for p in db.iterdir() if p.is_dir()]) == 2
    assert not [p for p in db.iterdir() if p.name.startswith(".") and p.is_dir()]


_WORKER = """
import json, sys
from bids_spheres.app.discovery import collect_runs, make_layout
layout = make_layout(sys.argv[1], sys.argv[2])
print(json.dumps([str(r.bold) for r in collect_runs(layout)]))
"""


def test_concurrent_starts_share_one_database(deriv: DemoInfo, tmp_path: Path) -> None:
    db = tmp_path / "db"

    def start_all() -> list[list[str]]:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(deriv.fmriprep_dir), str(db)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
        return [json.loads(out) for out, _ in outputs]

    expected = [str(p) for p in deriv.bold_files]
    assert start_all() == [expected] * 2  # two processes build at once
    folders = [p for p in db.iterdir() if p.is_dir()]
    assert len(folders) == 1 and not folders[0].name.startswith(".")
    sqlite = folders[0] / "layout_index.sqlite"
    stamp = sqlite.stat().st_mtime_ns
    assert start_all() == [expected] * 2  # two processes read the same index
    assert sqlite.stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- filters


def test_filters_null_star_and_lists(with_sessions: DemoInfo, tmp_path: Path) -> None:
    layout = make_layout(with_sessions.fmriprep_dir, None)
    filter_file = tmp_path / "filter.json"
    filter_file.write_text(
        json.dumps({"bold": {"session": "2", "acquisition": None, "run": "*"}, "t1w": {}})
    )
    filters = load_filter_file(filter_file)
    assert filters == {"bold": {"session": "2", "acquisition": None, "run": "*"}, "t1w": {}}
    assert _labels(collect_runs(layout, bids_filters=filters)) == [
        "sub-01_ses-2_task-rest_run-1",
        "sub-02_ses-2_task-rest_run-1",
    ]
    listed = {"bold": {"session": ["1"], "run": 1, "suffix": "bold", "datatype": "func"}}
    assert _labels(collect_runs(layout, participant_label="01", bids_filters=listed)) == [
        "sub-01_ses-1_task-rest_run-1"
    ]
    assert len(collect_runs(layout, bids_filters={"bold": {"session": "*"}})) == 4
    with pytest.raises(
        NothingSelectedError, match=re.escape('filters {"session": null} selected no')
    ):
        collect_runs(layout, bids_filters={"bold": {"session": None}})

    with pytest.raises(NothingSelectedError) as err:
        collect_runs(layout, bids_filters={"bold": {"acquisition": "*"}})
    assert str(err.value) == (
        'the --bids-filter-file filters {"acquisition": "*"} selected no desc-preproc_bold in '
        f"space {SPACE} under {with_sessions.fmriprep_dir}; relax or remove them"
    )
    assert err.value.exit_code == 66  # as an unknown participant or space (issue 14)
    with pytest.raises(
        UsageError, match="session is selected both by an option and by the --bids-filter-file"
    ):
        collect_runs(layout, session_label="1", bids_filters={"bold": {"session": "1"}})
    assert validate_bids_filters({"bold": {"run": "02", "echo": 1}}) == {
        "bold": {"run": 2, "echo": 1}
    }


def test_session_null_filter_selects_runs_without_session(deriv: DemoInfo) -> None:
    layout = make_layout(deriv.fmriprep_dir, None)
    assert len(collect_runs(layout, bids_filters={"bold": {"session": None}})) == 4
    with pytest.raises(NothingSelectedError, match='"session": "\\*"'):
        collect_runs(layout, bids_filters={"bold": {"session": "*"}})


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ('{"bold": {"session": "01",}}', UsageError, "is not valid JSON (Expecting"),
        ("[1, 2]", UsageError, "must hold a JSON object"),
        ('{"blod": {}}', UsageError, "unknown query 'blod'"),
        ('{"bold": ["session"]}', UsageError, "'bold' must map entities to values"),
        ('{"bold": {"sesion": "1"}}', UsageError, "'sesion' in 'bold' is not a BIDS entity"),
        ('{"bold": {"session": "../01"}}', UsageError, "contains a path separator or '..'"),
        ('{"bold": {"task": "a/b"}}', UsageError, "contains a path separator or '..'"),
        ('{"bold": {"task": "rest-1"}}', UsageError, "is not a BIDS label"),
        ('{"bold": {"run": "one"}}', UsageError, "is not a number"),
        ('{"bold": {"run": true}}', UsageError, "is not a label"),
        ('{"bold": {"run": -1}}', UsageError, "is negative"),
        ('{"bold": {"session": []}}', UsageError, "is an empty list"),
        ('{"bold": {"session": {"a": 1}}}', UsageError, "is not a label"),
        ('{"bold": {"space": "T1w"}}', UsageError, "choose the space with --space"),
        ('{"bold": {"desc": "preproc"}}', UsageError, "always reads desc-preproc"),
        ('{"bold": {"extension": ".nii"}}', UsageError, "reads .nii and .nii.gz BOLD"),
    ],
)
def test_filter_file_errors(tmp_path: Path, content: str, error: type, message: str) -> None:
    path = tmp_path / "filters.json"
    path.write_text(content)
    with pytest.raises(error) as err:
        load_filter_file(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_filter_file_size_and_presence(tmp_path: Path, deriv: DemoInfo) -> None:
    with pytest.raises(MissingInputError, match=f"--bids-filter-file {tmp_path}/no.json does"):
        load_filter_file(tmp_path / "no.json")
    big = tmp_path / "big.json"
    big.write_text('{"bold": {}}' + " " * MAX_FILTER_FILE_BYTES)
    with pytest.raises(UsageError, match=f"is {MAX_FILTER_FILE_BYTES + 12} bytes, more than"):
        load_filter_file(big)
    layout = make_layout(deriv.fmriprep_dir, None)
    with pytest.raises(UsageError, match="bold suffix='T1w' conflicts"):
        collect_runs(layout, bids_filters={"bold": {"suffix": "T1w"}})


# --------------------------------------------------------------------------- selection errors


def test_selection_error_messages(deriv: DemoInfo) -> None:
    root = deriv.fmriprep_dir
    layout = make_layout(root, None)
    cases = [
        (
            {"participant_label": ["03", "sub-01"]},
            MissingInputError,
            f"participant(s) 03 not found under {root} (subjects present: 01, 02); give labels "
            "from that list",
        ),
        (
            {"space": "MNI152NLin6Asym"},
            MissingInputError,
            f"no desc-preproc_bold in space MNI152NLin6Asym under {root} (spaces present: "
            f"{SPACE}, T1w); choose one with --space or rerun fMRIPrep with --output-spaces "
            "MNI152NLin6Asym",
        ),
        (
            {"space": "fsLR"},
            MissingInputError,
            f"no desc-preproc_bold in space fsLR under {root} (spaces present: {SPACE}, T1w)",
        ),
        (
            {"space": f"{SPACE}:res-2"},
            MissingInputError,
            f"no desc-preproc_bold in space {SPACE}:res-2 under {root} (resolutions present in "
            f"{SPACE}: none (no res entity)); give --space {SPACE} without :res-",
        ),
        (
            {"task": "motor", "participant_label": "01"},
            NothingSelectedError,
            f"task motor selected no desc-preproc_bold in space {SPACE} under {root} for sub-01 "
            "(task values present: rest); give values from that list",
        ),
        ({"run": [3]}, NothingSelectedError, "(run values present: 1, 2)"),
        ({"session_label": "1"}, NothingSelectedError, "(session values present: none)"),
        ({"participant_label": "../01"}, UsageError, "participant label '../01' is not a BIDS"),
        ({"participant_label": "01/"}, UsageError, "participant label '01/' is not a BIDS"),
        ({"session_label": "a b"}, UsageError, "session label 'a b' is not a BIDS label"),
        ({"participant_label": []}, UsageError, "participant label list is empty"),
        ({"run": "x"}, UsageError, "run 'x' is not a run number"),
        ({"space": "MNI/../x"}, UsageError, "is not a BIDS space label"),
        (
            {"space": f"{SPACE}:cohort-1"},
            MissingInputError,
            f"(cohorts present in {SPACE}: none (no cohort entity))",
        ),
        ({"space": f"{SPACE}:den-91k"}, UsageError, "give at most one cohort-C and one res-N"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error) as err:
            collect_runs(layout, **kwargs)
        assert message in str(err.value), (kwargs, str(err.value))
        assert "\n" not in str(err.value)


def test_no_subjects_and_no_preproc(tmp_path: Path, small: DemoInfo) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(small.root / "dataset_description.json", empty)
    with pytest.raises(MissingInputError, match=r"no sub-\* folders with functional outputs"):
        collect_runs(make_layout(empty, None))
    for bold in small.root.rglob("*desc-preproc_bold.nii.gz"):
        bold.unlink()
    with pytest.raises(MissingInputError) as err:
        collect_runs(make_layout(small.fmriprep_dir, None), participant_label="01")
    assert str(err.value) == (
        f"no *_desc-preproc_bold.nii[.gz] under {small.fmriprep_dir} for sub-01; check that "
        "fMRIPrep finished and that bids_dir (or --derivatives) points at its output folder"
    )


# --------------------------------------------------------------------------- run details


def _tiny_bold(path: Path, *, zoom: float, unit: str) -> None:
    img = nib.Nifti1Image(np.zeros((2, 2, 2, 5), dtype=np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", unit)
    img.header.set_zooms((1.0, 1.0, 1.0, zoom))
    nib.save(img, path)


def test_repetition_time_sources(small: DemoInfo) -> None:
    prefix = f"{_run_prefix(small)}_{MNI}_desc-preproc_bold"
    bold, sidecar = Path(f"{prefix}.nii.gz"), Path(f"{prefix}.json")

    def t_r() -> float:
        run = collect_runs(make_layout(small.fmriprep_dir, None))[0]
        if run.problem:  # a run without a usable TR is reported, not fatal for the others
            assert np.isnan(run.t_r)
            raise DataError(run.problem)
        return run.t_r

    sidecar.write_text(json.dumps({"SkullStripped": True, "TaskName": "rest"}))
    assert t_r() == 2.0  # header pixdim[4] in seconds
    assert collect_runs(make_layout(small.fmriprep_dir, None))[0].t_r_source is None
    _tiny_bold(bold, zoom=2500.0, unit="msec")
    assert t_r() == 2.5
    _tiny_bold(bold, zoom=800000.0, unit="usec")
    assert t_r() == pytest.approx(0.8)
    _tiny_bold(bold, zoom=0.8, unit="sec")  # float32 pixdim: 0.800000011920929
    assert t_r() == 0.8  # what the header means, as the sidecar would say it
    for zoom, unit, seconds in [(700.0, "msec", 0.7), (1400.0, "msec", 1.4), (570.0, "msec", 0.57),
                                (800000.0, "usec", 0.8), (720.0, "msec", 0.72)]:  # fmt: skip
        _tiny_bold(bold, zoom=zoom, unit=unit)
        assert t_r() == seconds, (zoom, unit)  # exactly: 700 * 1e-3 is 0.7000000000000001

    # Inheritance: a top-level sidecar applies; the file's own sidecar wins. t_r_source
    # names the one that gave the value, also when the file's own sidecar lacks it.
    top = small.fmriprep_dir / "task-rest_bold.json"
    top.write_text('{"RepetitionTime": 1.5}')
    assert t_r() == 1.5
    runs = collect_runs(make_layout(small.fmriprep_dir, None))
    assert runs[0].sidecar == sidecar and runs[0].t_r_source == top
    sidecar.write_text('{"RepetitionTime": 0.72}')
    assert t_r() == 0.72
    assert collect_runs(make_layout(small.fmriprep_dir, None))[0].t_r_source == sidecar
    sidecar.unlink()
    runs = collect_runs(make_layout(small.fmriprep_dir, None))
    assert runs[0].t_r == 1.5 and runs[0].sidecar is None and runs[0].t_r_source == top

    (small.fmriprep_dir / "task-rest_bold.json").write_text('{"RepetitionTime": "2s"}')
    with pytest.raises(DataError, match=r"RepetitionTime='2s' in the JSON sidecar of .* is not"):
        t_r()
    (small.fmriprep_dir / "task-rest_bold.json").unlink()
    _tiny_bold(bold, zoom=0.0, unit="sec")
    with pytest.raises(DataError) as err:
        t_r()
    assert str(err.value) == (
        f"{bold} has no RepetitionTime in its JSON sidecar and no usable time step in its header "
        "(pixdim[4]); add RepetitionTime (seconds) to the sidecar"
    )
    assert err.value.exit_code == 65


def test_older_confounds_regressors_name(small: DemoInfo) -> None:
    prefix = _run_prefix(small)
    for ext in ("tsv", "json"):
        Path(f"{prefix}_desc-confounds_timeseries.{ext}").rename(
            f"{prefix}_desc-confounds_regressors.{ext}"
        )
    run = collect_runs(make_layout(small.fmriprep_dir, None))[0]
    assert run.confounds == Path(f"{prefix}_desc-confounds_regressors.tsv")
    assert run.confounds_json == Path(f"{prefix}_desc-confounds_regressors.json")

    shutil.copy(
        f"{prefix}_desc-confounds_regressors.tsv", f"{prefix}_desc-confounds_timeseries.tsv"
    )
    run = collect_runs(make_layout(small.fmriprep_dir, None))[0]
    assert run.confounds == Path(f"{prefix}_desc-confounds_timeseries.tsv")

    for path in prefix.parent.glob("*desc-confounds*"):
        path.unlink()
    run = collect_runs(make_layout(small.fmriprep_dir, None))[0]
    assert run.confounds is None and run.confounds_json is None and run.mask is not None


def test_resolutions(small: DemoInfo) -> None:
    prefix = f"{_run_prefix(small)}_{MNI}"
    for kind in ("desc-preproc_bold.nii.gz", "desc-preproc_bold.json", "desc-brain_mask.nii.gz"):
        Path(f"{prefix}_{kind}").rename(f"{prefix}_res-2_{kind}")
    layout = make_layout(small.fmriprep_dir, None)
    (run,) = collect_runs(layout, space=f"{SPACE}:res-2")
    assert run.entities["res"] == "2" and run.mask.name.endswith("res-2_desc-brain_mask.nii.gz")
    assert collect_runs(layout) == [run]

    shutil.copy(
        f"{prefix}_res-2_desc-preproc_bold.nii.gz", f"{prefix}_res-1_desc-preproc_bold.nii.gz"
    )
    layout = make_layout(small.fmriprep_dir, None)
    with pytest.raises(UsageError) as err:
        collect_runs(layout)
    assert str(err.value) == (
        f"space {SPACE} has several resolutions for run sub-01_task-rest_run-1 (res-1, res-2); "
        f"choose one with --space {SPACE}:res-1"
    )
    (res1,) = collect_runs(layout, space=f"{SPACE}:res-1")
    assert res1.mask is None and res1.t_r == 2.0 and res1.sidecar is None
    with pytest.raises(MissingInputError, match=r"\(resolutions present in .*: res-1, res-2\)"):
        collect_runs(layout, space=f"{SPACE}:res-3")


def test_pybids_warnings_about_the_input_go_to_the_debug_log(
    small: DemoInfo, caplog: pytest.LogCaptureFixture
) -> None:
    """fMRIPrep < 20.2 wrote PipelineDescription: pybids warns 'use pybids upgrade' with a
    source line of its own; the run reads correctly, so it is one debug line (-vv)."""
    import logging
    import warnings

    description = small.fmriprep_dir / "dataset_description.json"
    content = json.loads(description.read_text())
    content.pop("GeneratedBy", None)
    content["PipelineDescription"] = {"Name": "fMRIPrep", "Version": "1.5.0"}
    description.write_text(json.dumps(content))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning reaching the user fails the test
        with caplog.at_level(logging.DEBUG, logger="bids_spheres"):
            layout = make_layout(small.fmriprep_dir, None)
    assert collect_runs(layout)
    (line,) = [r.getMessage() for r in caplog.records if "PipelineDescription" in r.getMessage()]
    assert line.startswith("pybids, indexing ") and "\n" not in line


def test_fmriprep_outputs_described_as_raw(small: DemoInfo) -> None:
    """A hand-made description (no DatasetType, no GeneratedBy) over fMRIPrep's files: the
    message says so and how to fix it; --derivatives naming the folder is enough."""
    root = small.fmriprep_dir
    (root / "dataset_description.json").write_text('{"Name": "outputs", "BIDSVersion": "1.4.0"}')
    with pytest.raises(MissingInputError) as err:
        find_fmriprep_dir(root)
    assert "holds fMRIPrep outputs (e.g. sub-01_" in str(err.value)
    assert "describes a raw dataset" in str(err.value)
    assert f"--derivatives {root}" in str(err.value)
    assert find_fmriprep_dir(root, root) == (None, root)


def test_only_dataset_warnings_of_pybids_become_debug_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A UserWarning (about the input) is logged; a deprecation is passed on unchanged."""
    import logging
    import warnings

    import bids.layout

    from bids_spheres.app import discovery

    class Layout:
        def __init__(self, *args: object, **kwargs: object) -> None:
            warnings.warn("the dataset is odd", UserWarning, stacklevel=2)
            warnings.warn("this call is deprecated", DeprecationWarning, stacklevel=2)

    monkeypatch.setattr(bids.layout, "BIDSLayout", Layout)
    with caplog.at_level(logging.DEBUG, logger="bids_spheres"):
        with pytest.warns(DeprecationWarning, match="this call is deprecated") as seen:
            discovery._index(tmp_path, None)
    assert [w.category for w in seen] == [DeprecationWarning]
    assert any("the dataset is odd" in r.getMessage() for r in caplog.records)


def test_res_native_selects_the_copy_without_res(small: DemoInfo) -> None:
    """fMRIPrep's --output-spaces MNI MNI:res-2 writes a copy without res (the BOLD's own
    grid) beside res-2: :res-native selects it, and the ambiguity message offers it."""
    prefix = f"{_run_prefix(small)}_{MNI}"
    for kind in ("desc-preproc_bold.nii.gz", "desc-brain_mask.nii.gz"):
        shutil.copy(f"{prefix}_{kind}", f"{prefix}_res-2_{kind}")
    layout = make_layout(small.fmriprep_dir, None)
    (native,) = collect_runs(layout, space=f"{SPACE}:res-native")
    assert native.bold == Path(f"{prefix}_desc-preproc_bold.nii.gz")
    assert native.mask == Path(f"{prefix}_desc-brain_mask.nii.gz") and "res" not in native.entities
    (res2,) = collect_runs(layout, space=f"{SPACE}:res-2")
    assert res2.bold == Path(f"{prefix}_res-2_desc-preproc_bold.nii.gz")
    with pytest.raises(UsageError) as err:
        collect_runs(layout)
    assert str(err.value) == (
        f"space {SPACE} has several resolutions for run sub-01_task-rest_run-1 (res-2, no res); "
        f"choose one with --space {SPACE}:res-2 (or {SPACE}:res-native for the one without res)"
    )


def test_aroma_and_duplicate_extensions(small: DemoInfo) -> None:
    prefix = f"{_run_prefix(small)}_{MNI}"
    aroma = Path(f"{prefix}_desc-smoothAROMAnonaggr_bold.nii.gz")
    shutil.copy(f"{prefix}_desc-preproc_bold.nii.gz", aroma)
    (run,) = collect_runs(make_layout(small.fmriprep_dir, None))
    assert run.aroma_bold == aroma and run.bold.name.endswith("desc-preproc_bold.nii.gz")

    _tiny_bold(Path(f"{prefix}_desc-preproc_bold.nii"), zoom=2.0, unit="sec")
    (run,) = collect_runs(make_layout(small.fmriprep_dir, None))  # one run, failing alone
    assert re.fullmatch(r"the same run is stored twice: .*bold\.nii and .*nii\.gz; remove .*",
                        run.problem or "")  # fmt: skip


def test_make_layout_errors(tmp_path: Path, small: DemoInfo) -> None:
    with pytest.raises(MissingInputError, match=f"fMRIPrep folder {tmp_path}/gone does not"):
        make_layout(tmp_path / "gone", tmp_path / "db")
    with pytest.raises(UsageError) as err:
        make_layout(small.fmriprep_dir, small.fmriprep_dir / "sub-01" / "db")
    assert str(err.value) == (
        f"pybids database folder {small.fmriprep_dir}/sub-01/db is inside the input dataset "
        f"{small.fmriprep_dir}; inputs may be read-only, so give a --work-dir outside it"
    )
    assert not (small.fmriprep_dir / "sub-01" / "db").exists()
    # a work dir that cannot be created (its parent is a file; root cannot bypass this)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    from bids_spheres.errors import OutputError

    with pytest.raises(OutputError, match="give a writable --work-dir"):
        make_layout(small.fmriprep_dir, blocker / "db")
