"""--space T1w end to end: template seeds mapped per subject through fMRIPrep's transforms.

A demo dataset (two sessions) gets, per subject, an analytic T1w <-> MNI pair of
ANTs composites (tests/app/native_helpers.py) -- sub-01 at subject level, sub-02
in ``ses-1/anat`` only (fMRIPrep's single anatomical reference), sub-03 none --
and space-T1w BOLD runs carrying one signal at the *native* location of the PCC
seed and another at its MNI coordinates.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_participant
from native_helpers import affine, to_native, write_pair

from bids_spheres.app.demo import DEMO_SEEDS, DemoInfo, build_dataset

SEED = "PCC"
MNI_XYZ = np.array([next(s.xyz for s in DEMO_SEEDS if s.name == SEED)], dtype=float)
T1W_AFFINE = np.array(
    [[4.0, 0, 0, -110.0], [0, 4.0, 0, -150.0], [0, 0, 4.0, -90.0], [0, 0, 0, 1.0]]
)
T1W_SHAPE = (56, 66, 56)
SHIFTS = {"01": (6.0, -9.0, 12.0), "02": (12.0, 8.0, -10.0), "03": (16.0, -6.0, 10.0)}
ARGS = ("--denoise-strategy", "none", "--mask", "none", "--standardize", "none")


def _signals(sub: str, ses: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([int(sub), int(ses)])
    return rng.normal(0, 1, n), rng.normal(0, 1, n)


def _write_t1w_run(info: DemoInfo, sub: str, ses: str, native_xyz: np.ndarray) -> None:
    """The run's space-T1w BOLD: noise, the target at native_xyz, a decoy at the MNI xyz."""
    func = info.fmriprep_dir / f"sub-{sub}" / f"ses-{ses}" / "func"
    bold = next(func.glob("*_space-T1w_desc-preproc_bold.nii.gz"))
    n = info.n_volumes
    target, decoy = _signals(sub, ses, n)
    ijk = np.indices(T1W_SHAPE).reshape(3, -1).T
    xyz = ijk @ T1W_AFFINE[:3, :3].T + T1W_AFFINE[:3, 3]
    rng = np.random.default_rng([7, int(sub), int(ses)])
    data = 1000.0 + rng.normal(0, 2.0, (xyz.shape[0], n))
    near_target = np.linalg.norm(xyz - native_xyz, axis=1) <= 9.0
    near_decoy = np.linalg.norm(xyz - MNI_XYZ[0], axis=1) <= 9.0
    assert not (near_target & near_decoy).any()
    data[near_target] += 20.0 * target
    data[near_decoy] += 20.0 * decoy
    img = nib.Nifti1Image(data.reshape(*T1W_SHAPE, n).astype(np.float32), T1W_AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((4.0, 4.0, 4.0, info.t_r))
    img.to_filename(bold)


@pytest.fixture(scope="module")
def native_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("native")
    info = build_dataset(base / "ds", n_subjects=3, n_runs=1, sessions=["1", "2"], n_volumes=60)
    # MNI-space output before any transform or T1w run was added
    assert run_participant(info.root, base / "mni_before" / "out") == 0
    for sub, shift in SHIFTS.items():
        a = affine(shift=shift)
        if sub == "01":
            write_pair(info.fmriprep_dir / "sub-01" / "anat", "sub-01", a)
        elif sub == "02":
            write_pair(info.fmriprep_dir / "sub-02" / "ses-1" / "anat", "sub-02_ses-1", a)
        for ses in ("1", "2"):
            _write_t1w_run(info, sub, ses, to_native(MNI_XYZ, a)[0])
    return {"info": info, "base": base}


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a")


def test_signal_at_the_native_location_is_recovered_in_its_seed_column(
    native_data: dict, caplog: pytest.LogCaptureFixture
) -> None:
    info, base = native_data["info"], native_data["base"]
    out = base / "t1w" / "out"
    with caplog.at_level(logging.ERROR, logger="bids_spheres"):
        code = run_participant(info.root, out, "--space", "T1w:res-native", *ARGS)
    assert code == 1  # sub-03 has no transform: its runs failed, the others were written
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FAILED")]
    assert len(failed) == 2 and all("sub-03" in m for m in failed)
    assert all(
        "no from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5 transform for sub-03" in m
        for m in failed
    )

    written = sorted(out.glob("sub-*/ses-*/func/*_space-T1w_*_timeseries.tsv"))
    assert [p.name.split("_task")[0] for p in written] == [
        "sub-01_ses-1",
        "sub-01_ses-2",
        "sub-02_ses-1",
        "sub-02_ses-2",
    ]
    for tsv in written:
        sub, ses = tsv.name[4:6], tsv.name[11:12]
        sidecar = json.loads(tsv.with_suffix(".json").read_text())
        target, decoy = _signals(sub, ses, info.n_volumes)
        kept = sidecar["KeptVolumes"]
        column = _table(tsv)[SEED].to_numpy()
        assert np.corrcoef(column, target[kept])[0, 1] > 0.9
        assert abs(np.corrcoef(column, decoy[kept])[0, 1]) < 0.3

        # provenance: native coordinates, the transform as a BIDS URI, the template
        a = affine(shift=SHIFTS[sub])
        for seed in DEMO_SEEDS:
            entry = sidecar["Seeds"][seed.name]
            assert entry["CoordinatesMM"] == list(map(float, seed.xyz))
            expected = to_native(np.array([seed.xyz], dtype=float), a)[0]
            np.testing.assert_allclose(entry["NativeCoordinatesMM"], expected, atol=0.1)
        where = "sub-01/anat/sub-01" if sub == "01" else "sub-02/ses-1/anat/sub-02_ses-1"
        uri = f"bids:fmriprep:{where}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
        assert sidecar["SeedTransform"]["Template"] == "MNI152NLin2009cAsym"
        assert sidecar["SeedTransform"]["Transform"] == uri
        assert uri in sidecar["Sources"]
        assert sidecar["Space"] == "T1w"
        assert sidecar["SeedSpace"] == "MNI152NLin2009cAsym"
        assert sidecar["Warnings"] == []

    # the methods text says how the seeds got there; the MNI-space one does not
    methods = " ".join((out / "logs" / "CITATION.md").read_text().split())
    assert "fMRIPrep's `from-T1w_to-MNI152NLin2009cAsym` ANTs composite transform" in methods
    assert "nitransforms" not in (base / "mni_before" / "out" / "logs" / "CITATION.md").read_text()

    # the seed table stays the template one
    table = _table(out / "atlas-demoseeds_seeds.tsv")
    assert table[["x", "y", "z"]].to_numpy().tolist() == [list(s.xyz) for s in DEMO_SEEDS]

    # a rerun skips the finished runs (the transform's stamp is part of the hash)
    caplog.clear()
    assert run_participant(info.root, out, "--space", "T1w", *ARGS) == 1
    assert sorted(out.glob("sub-*/ses-*/func/*_space-T1w_*_timeseries.tsv")) == written


def test_mni_space_runs_are_unchanged_by_the_transforms(native_data: dict) -> None:
    info, base = native_data["info"], native_data["base"]
    out = base / "mni_after" / "out"
    assert run_participant(info.root, out) == 0
    before = base / "mni_before" / "out"
    files = sorted(p.relative_to(before) for p in before.glob("sub-*/ses-*/func/sub-*"))
    assert len(files) == 3 * 2 * 4
    for rel in files:
        if rel.suffix == ".tsv":
            assert (out / rel).read_bytes() == (before / rel).read_bytes(), rel
        else:
            old, new = json.loads((before / rel).read_text()), json.loads((out / rel).read_text())
            assert "SeedTransform" not in new
            assert new == old, rel


def test_seeds_in_a_template_without_transforms_are_one_error_before_any_run(
    native_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    info = native_data["info"]
    seeds = tmp_path / "six.tsv"
    shutil.copy(info.seeds_tsv, seeds)
    seeds.with_suffix(".json").write_text(json.dumps({"Space": "MNI152NLin6Asym"}))
    out = tmp_path / "out"
    code = run_participant(info.root, out, "--space", "T1w", *ARGS, "--seeds", str(seeds))
    assert code == 65
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no selected subject" in err[0] and "from-T1w_to-MNI152NLin6Asym" in err[0]
    assert "MNI152NLin2009cAsym" in err[0]  # what is present
    assert not list(out.glob("sub-*"))


def test_native_maps_name_the_native_centre_and_transform(native_data: dict) -> None:
    info, base = native_data["info"], native_data["base"]
    out = base / "t1w_maps" / "out"
    code = run_participant(info.root, out, "--space", "T1w", *ARGS, "--map-seeds", SEED)
    assert code == 1  # sub-03 has no transform
    sidecars = sorted(out.glob("sub-*/ses-*/func/*_space-T1w_*_timeseries.json"))
    assert len(sidecars) == 4
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        meta = json.loads(
            (path.parent / (sidecar["SeedMaps"][SEED]["fisherz"].rsplit("/", 1)[1]))
            .with_suffix("")
            .with_suffix(".json")
            .read_text()
        )
        seed = meta["Seed"]
        assert seed["NativeCoordinatesMM"] == sidecar["Seeds"][SEED]["NativeCoordinatesMM"]
        assert seed["CoordinatesMM"] == list(map(float, MNI_XYZ[0]))
        assert seed["SeedSpace"] == "MNI152NLin2009cAsym"
        assert seed["SeedTransform"] == sidecar["SeedTransform"]
