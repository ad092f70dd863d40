"""Corrupt and odd inputs, hostile datasets, output problems: exit codes, one-line messages,
the other runs still processed, nothing written outside output_dir and the work dir."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_participant as _run
from hypothesis import given, settings
from hypothesis import strategies as st

from bids_spheres.app.cli import main
from bids_spheres.app.demo import DemoInfo


@pytest.fixture(scope="module")
def demo(demo_dataset: DemoInfo) -> DemoInfo:
    """The shared, read-only standard demo (tests/conftest.py); tests that corrupt
    inputs take ``demo_copy``, a private copy of it."""
    return demo_dataset


def _bold(data: Path) -> Path:
    return next(data.glob("sub-01/func/*run-1*_desc-preproc_bold.nii.gz"))


def _confounds(data: Path) -> Path:
    return next(data.glob("sub-01/func/*run-1*_desc-confounds_timeseries.tsv"))


def _outputs(out: Path) -> list[Path]:
    return sorted(out.glob("sub-*/func/*_timeseries.tsv"))


# ---------------------------------------------------------------- one bad run


def _truncate(data: Path) -> None:
    blob = _bold(data).read_bytes()
    _bold(data).write_bytes(blob[: len(blob) // 2])


def _bad_header(data: Path) -> None:
    """An unknown datatype code in the NIfTI header."""
    import gzip

    path = _bold(data)
    with gzip.open(path, "rb") as fh:
        blob = bytearray(fh.read())
    blob[70:72] = (9999).to_bytes(2, "little")  # datatype
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(blob))


def _three_d(data: Path) -> None:
    img = nib.load(_bold(data))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine, img.header), _bold(data))


def _wrong_rows(data: Path) -> None:
    lines = _confounds(data).read_text().splitlines()
    _confounds(data).write_text("\n".join(lines[:-5]) + "\n")


def _few_rows(data: Path) -> None:
    """Header and 9 rows: too few to keep any run, but the file is truncated first."""
    lines = _confounds(data).read_text().splitlines()
    _confounds(data).write_text("\n".join(lines[:10]) + "\n")


def _cut_mid_row(data: Path) -> None:
    """Cut in the middle of a row: its missing cells are not the problem, the length is."""
    text = _confounds(data).read_text()
    cut = text.index("\n", len(text) // 2) - 7
    _confounds(data).write_text(text[:cut])


def _two_extensions(data: Path) -> None:
    """The same run also stored uncompressed: that run fails, not the job."""
    img = nib.load(_bold(data))
    nib.save(img, str(_bold(data)).removesuffix(".gz"))


def _missing_column(data: Path) -> None:
    table = pd.read_csv(_confounds(data), sep="\t")
    table.drop(columns=["csf"]).to_csv(_confounds(data), sep="\t", index=False, na_rep="n/a")


def _non_numeric(data: Path) -> None:
    table = pd.read_csv(_confounds(data), sep="\t")
    table["csf"] = table["csf"].astype(object)
    table.loc[10, "csf"] = "abc"
    table.to_csv(_confounds(data), sep="\t", index=False, na_rep="n/a")


def _empty_tsv(data: Path) -> None:
    _confounds(data).write_text("")


def _no_repetition_time(data: Path) -> None:
    sidecar = _bold(data).with_name(_bold(data).name.replace(".nii.gz", ".json"))
    meta = json.loads(sidecar.read_text())
    meta.pop("RepetitionTime")
    sidecar.write_text(json.dumps(meta))
    img = nib.load(_bold(data))
    img.header.set_zooms((*img.header.get_zooms()[:3], 0.0))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), _bold(data))


@pytest.mark.parametrize(
    ("corrupt", "names", "message"),
    [
        (_truncate, "bold", "truncated|corrupt"),
        (_bad_header, "bold", "cannot read"),
        (_three_d, "bold", "not a 4D BOLD"),
        (_wrong_rows, "confounds|bold", "rows|volumes"),
        (_few_rows, "confounds", "truncated"),
        (_cut_mid_row, "confounds", "truncated"),
        (_two_extensions, "bold", "stored twice"),
        (_missing_column, "confounds", "csf"),
        (_non_numeric, "confounds", "abc|numeric|number"),
        (_empty_tsv, "confounds", "empty"),
        (_no_repetition_time, "bold", "RepetitionTime"),
    ],
    ids=[
        "truncated-gz",
        "bad-header",
        "3d-bold",
        "confound-rows",
        "confounds-9-rows",
        "confounds-cut-mid-row",
        "nii-and-nii-gz",
        "missing-column",
        "non-numeric",
        "empty-tsv",
        "no-tr",
    ],
)
def test_one_bad_run_fails_alone(
    demo_copy: DemoInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    corrupt: Callable[[Path], None],
    names: str,
    message: str,
) -> None:
    import re

    data = demo_copy.root
    bold, confounds = _bold(data), _confounds(data)
    corrupt(data)
    out = tmp_path / "out"
    assert _run(data, out) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("bids_spheres: run failed")]
    assert len(failed) == 1, err
    assert bold.name in failed[0]
    named = {"bold": bold.name, "confounds": confounds.name}
    assert any(
        named[n] in failed[0].split(": ", 2)[-1] or str(data) in failed[0]
        for n in names.split("|")
    ), failed[0]
    assert re.search(message, failed[0], flags=re.I), failed[0]
    assert len(_outputs(out)) == 3  # the other runs are written
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


# --------------------------------------------------------- odd but valid runs


def test_nan_voxels_constant_spheres_oblique_affine_and_mask_grid(
    demo_copy: DemoInfo, tmp_path: Path, capsys
) -> None:
    data = demo_copy.root
    seeds = pd.read_csv(data / "code" / "demo_seeds.tsv", sep="\t")
    # run 1 of sub-01: NaN/Inf voxels in PCC, constant (all 500) voxels in RIPS
    path = _bold(data)
    img = nib.load(path)
    arr = np.asarray(img.dataobj).copy()
    inv = np.linalg.inv(img.affine)
    pcc = np.rint(inv @ np.r_[seeds.set_index("name").loc["PCC", ["x", "y", "z"]], 1])[:3]
    rips = np.rint(inv @ np.r_[seeds.set_index("name").loc["RIPS", ["x", "y", "z"]], 1])[:3]
    i, j, k = pcc.astype(int)
    arr[i, j, k, 5] = np.nan
    arr[i, j, k + 1, 6] = np.inf
    a, b, c = rips.astype(int)
    arr[a - 3 : a + 4, b - 3 : b + 4, c - 3 : c + 4, :] = 500.0
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), path)
    # run 2 of sub-01: an oblique affine (rotated 5 degrees about z, BOLD and mask alike)
    theta = np.deg2rad(5)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    for f in data.glob("sub-01/func/*run-2*space-MNI152NLin2009cAsym*.nii.gz"):
        im = nib.load(f)
        nib.save(nib.Nifti1Image(np.asarray(im.dataobj), rot @ im.affine, im.header), f)
    # sub-02 run-1: brain mask on another grid (2 mm instead of 4 mm): resampled
    mask_path = next(data.glob("sub-02/func/*run-1*desc-brain_mask.nii.gz"))
    m = nib.load(mask_path)
    fine_affine = m.affine.copy()
    fine_affine[:3, :3] /= 2
    fine = np.repeat(np.repeat(np.repeat(np.asarray(m.dataobj), 2, 0), 2, 1), 2, 2)
    nib.save(nib.Nifti1Image(fine.astype(np.uint8), fine_affine), mask_path)

    out = tmp_path / "out"
    assert _run(data, out) == 0
    assert len(_outputs(out)) == 4
    first = pd.read_csv(_outputs(out)[0], sep="\t")
    assert np.isfinite(first.to_numpy()).all()
    # a constant sphere has no variance: no division by zero; after detrending and
    # standardization it is zero up to rounding (documented in the README)
    assert np.abs(first["RIPS"]).max() < 1e-6
    assert "non-finite" in capsys.readouterr().err
    sidecar = json.loads(_outputs(out)[0].with_suffix(".json").read_text())
    assert any("non-finite" in w for w in sidecar["Warnings"])


# ------------------------------------------------------------ hostile dataset


def test_symlink_outside_bids_dir_is_not_followed_for_writes(
    demo_copy: DemoInfo, tmp_path: Path
) -> None:
    data = demo_copy.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not touch")
    (data / "sub-01" / "func" / "link").symlink_to(outside)
    before = {p: p.stat().st_mtime_ns for p in outside.rglob("*")}
    out = tmp_path / "out"
    assert _run(data, out, "--participant-label", "01") == 0
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize("label", ["../../etc", "01/../02", "01\n02"])
def test_path_traversal_labels_are_refused(demo, tmp_path: Path, label: str) -> None:
    with pytest.raises(SystemExit) as info:
        _run(demo.root, tmp_path / "out", "--participant-label", label)
    assert info.value.code == 64
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"bold": {"subject": "../01"}}, "subject"),
        ({"bold": {"task": "rest/../x"}}, "task"),
        ("x" * 200_000, "bytes, more than"),
        ("{not json", "JSON"),
    ],
    ids=["traversal-subject", "traversal-task", "huge", "bad-json"],
)
def test_hostile_filter_files(demo, tmp_path: Path, capsys, content, message) -> None:
    import re

    path = tmp_path / "filter.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    code = _run(demo.root, tmp_path / "out", "--bids-filter-file", str(path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 64, err
    assert len(err) == 1 and re.search(message, err[0]), err


def test_unsafe_seed_names_are_refused(demo, tmp_path: Path, capsys) -> None:
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text("name\tx\ty\tz\n../evil\t0\t-52\t26\n")
    out = tmp_path / "out"
    code = main(
        [
            str(demo.root),
            str(out),
            "participant",
            "--seeds",
            str(seeds),
            "--work-dir",
            str(tmp_path / "w"),
        ]
    )
    assert code == 65
    assert "seeds.tsv" in capsys.readouterr().err
    assert not list(out.glob("sub-*"))


# ------------------------------------------------------------ output problems


def test_output_dir_not_creatable_exits_73(demo, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _run(demo.root, blocker / "out") == 73
    assert "cannot create the output_dir" in capsys.readouterr().err


def test_disk_full_is_clear_and_leaves_no_partial_file(demo, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 5 kB fail with EFBIG, as a full disk would."""
    out = tmp_path / "out"
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (5_000, 5_000))
from bids_spheres.app.cli import main
sys.exit(main([{str(demo.root)!r}, {str(out)!r}, "participant", "--seeds",
               {str(demo.seeds_tsv)!r}, "--work-dir", {str(tmp_path / "work")!r},
               "--bids-database-dir", {str(tmp_path / "db")!r}]))
"""
    # build the pybids index first, without the limit (the index itself is large)
    assert (
        _run(
            demo.root,
            tmp_path / "warm",
            "--bids-database-dir",
            str(tmp_path / "db"),
            "--participant-label",
            "01",
            "--run",
            "1",
        )
        == 0
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 73, done.stderr  # the next runs would hit the limit too: stop
    assert "too large" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    for js in out.rglob("sub-*/**/*_timeseries.json"):
        json.loads(js.read_text())
        assert js.with_suffix(".tsv").is_file()


# ------------------------------------------------------------ properties


@settings(max_examples=25, deadline=None)
@given(
    n_vol=st.integers(20, 60),
    n_seeds=st.integers(1, 6),
    radius=st.sampled_from([None, 2.0, 4.0]),
    seed=st.integers(0, 10_000),
)
def test_masker_invariants(n_vol: int, n_seeds: int, radius, seed: int) -> None:
    from bids_spheres import NiftiSpheresMasker

    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = rng.standard_normal((12, 12, 12, n_vol)).astype(np.float32) * 5 + 100
    img = nib.Nifti1Image(data, affine)
    seeds = [tuple(rng.uniform(2, 20, 3)) for _ in range(n_seeds)]
    masker = NiftiSpheresMasker(
        seeds, radius=radius, allow_overlap=True, detrend=True, standardize="zscore"
    )
    out = masker.fit_transform(img)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, rtol=1e-4)
    order = rng.permutation(n_seeds)
    permuted = NiftiSpheresMasker(
        [seeds[i] for i in order],
        radius=radius,
        allow_overlap=True,
        detrend=True,
        standardize="zscore",
    ).fit_transform(img)
    np.testing.assert_array_equal(permuted, out[:, order])


def test_run_without_degrees_of_freedom_is_skipped(
    demo_small: DemoInfo, tmp_path: Path, capsys
) -> None:
    short = demo_small  # 40 volumes: 36p leaves no degrees of freedom
    out = tmp_path / "out"
    code = main(
        [
            str(short.root),
            str(out),
            "participant",
            "--seeds",
            str(short.seeds_tsv),
            "--denoise-strategy",
            "36p",
            "--work-dir",
            str(tmp_path / "w"),
        ]
    )
    assert code == 1  # nothing written: not a success (issue 13 item 16)
    err = capsys.readouterr().err
    assert "no degrees of freedom left" in err and "skipped" in err
    assert "bids_spheres: no run written: all 1 selected run(s) were skipped" in err
    assert not _outputs(out)
