"""Tests of bids_spheres.app.demo.build_dataset: bytes, layout, geometry, signals, confounds."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_spheres.app.demo import (
    DEMO_SEEDS,
    GRID_AFFINE,
    GRID_SHAPE,
    PLANTED_PAIRS,
    SPACE,
    DemoInfo,
    build_dataset,
    world_to_voxel,
)
from bids_spheres.errors import UsageError

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def full(demo_dataset: DemoInfo) -> DemoInfo:
    """The shared standard demo (tests/conftest.py): 2 subjects x two 100-volume runs,
    enough samples to check correlations.  Read-only."""
    return demo_dataset


def _confounds(bold: Path) -> pd.DataFrame:
    prefix = bold.name.split("_space-")[0]
    return pd.read_csv(
        bold.parent / f"{prefix}_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a"
    )


def test_same_arguments_give_same_bytes(tmp_path: Path) -> None:
    kwargs = {"n_subjects": 1, "n_runs": 1, "n_volumes": 40, "sessions": ["a"]}
    first = build_dataset(tmp_path / "one", **kwargs)
    second = build_dataset(tmp_path / "two", **kwargs)
    other = build_dataset(tmp_path / "three", seed=1, **kwargs)

    assert _tree(first.root) == _tree(second.root)
    assert len(_tree(first.root)) > 20
    bold = str(first.bold_files[0].relative_to(first.root))
    assert _tree(other.root)[bold] != _tree(first.root)[bold]
    for gz in first.root.rglob("*.gz"):
        header = gz.read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b"
        assert header[4:8] == b"\0\0\0\0", f"{gz} has a gzip mtime"


def test_derivatives_layout_files(tmp_path: Path) -> None:
    info = build_dataset(tmp_path / "ds", n_subjects=1, n_runs=1, n_volumes=40)
    assert info.root == info.fmriprep_dir == tmp_path / "ds"
    run = "sub-01/func/sub-01_task-rest_run-1"
    mni = f"{run}_space-{SPACE}"
    expected = {
        "dataset_description.json",
        "code/demo_seeds.tsv",
        "code/demo_seeds.json",
        "logs/CITATION.md",
        "sub-01.html",
        f"{mni}_desc-preproc_bold.nii.gz",
        f"{mni}_desc-preproc_bold.json",
        f"{mni}_desc-brain_mask.nii.gz",
        f"{mni}_boldref.nii.gz",
        f"{run}_desc-confounds_timeseries.tsv",
        f"{run}_desc-confounds_timeseries.json",
        f"{run}_space-T1w_desc-preproc_bold.nii.gz",
        f"{run}_space-T1w_desc-preproc_bold.json",
        f"{run}_space-T1w_desc-brain_mask.nii.gz",
        f"{run}_space-fsLR_den-91k_bold.dtseries.nii",
        f"{run}_space-fsLR_den-91k_bold.json",
        f"{run}_from-scanner_to-T1w_mode-image_xfm.txt",
        "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz",
        "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
        f"sub-01/anat/sub-01_from-{SPACE}_to-T1w_mode-image_xfm.h5",
        "sub-01/anat/sub-01_hemi-L_pial.surf.gii",
        "sub-01/figures/sub-01_task-rest_run-1_desc-carpetplot_bold.svg",
        "sub-01/log/20240101-000000_00000000-0000-0000-0000-000000000000/fmriprep.toml",
    }
    assert set(_tree(info.root)) == expected
    assert "res-" not in "".join(expected)  # 4 mm voxels: no res entity claimed

    description = json.loads((info.root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "fMRIPrep"
    assert description["GeneratedBy"][0]["Version"] == "23.2.1"
    sidecar = json.loads((info.root / f"{mni}_desc-preproc_bold.json").read_text())
    assert sidecar == {"RepetitionTime": 2.0, "SkullStripped": True, "TaskName": "rest"}
    assert info.bold_files == (info.root / f"{mni}_desc-preproc_bold.nii.gz",)


def test_raw_plus_derivatives_layout_with_sessions(tmp_path: Path) -> None:
    info = build_dataset(
        tmp_path / "ds",
        layout="raw+derivatives",
        n_subjects=2,
        n_runs=1,
        sessions=["pre", "post"],
        n_volumes=40,
        t_r=1.5,
    )
    root = info.root
    assert info.fmriprep_dir == root / "derivatives" / "fmriprep"
    assert info.seeds_tsv == root / "code" / "demo_seeds.tsv"
    assert not (info.fmriprep_dir / "code").exists()
    assert json.loads((root / "dataset_description.json").read_text())["DatasetType"] == "raw"
    participants = (root / "participants.tsv").read_text().splitlines()
    assert participants[0].split("\t") == ["participant_id", "age", "sex"]
    assert [line.split("\t")[0] for line in participants[1:]] == ["sub-01", "sub-02"]
    for sub, ses in itertools.product(("01", "02"), ("pre", "post")):
        raw = root / f"sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-rest_run-1_bold"
        img = nib.load(f"{raw}.nii.gz")
        assert img.shape[3] == 40 and img.get_data_dtype() == np.int16
        assert json.loads(Path(f"{raw}.json").read_text())["RepetitionTime"] == 1.5
        deriv = info.fmriprep_dir / f"sub-{sub}/ses-{ses}/func"
        assert (
            deriv / f"sub-{sub}_ses-{ses}_task-rest_run-1_desc-confounds_timeseries.tsv"
        ).is_file()
        assert (info.fmriprep_dir / f"sub-{sub}/anat/sub-{sub}_desc-preproc_T1w.nii.gz").is_file()
    assert len(info.bold_files) == 4
    assert info.sessions == ("pre", "post") and info.subjects == ("01", "02")
    assert info.t_r == 1.5 and nib.load(info.bold_files[0]).header.get_zooms()[3] == 1.5


def test_bold_and_mask_geometry(full: DemoInfo) -> None:
    img = nib.load(full.bold_files[0])
    assert img.shape == (*GRID_SHAPE, 100)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, GRID_AFFINE)
    np.testing.assert_array_equal(img.affine[:3, 3], [-96, -132, -78])
    assert img.header.get_zooms() == (4.0, 4.0, 4.0, 2.0)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert int(img.header["qform_code"]) == 4 and int(img.header["sform_code"]) == 4
    assert full.bold_files[0].stat().st_size < 5_500_000

    mask_path = Path(str(full.bold_files[0]).replace("desc-preproc_bold", "desc-brain_mask"))
    mask_img = nib.load(mask_path)
    np.testing.assert_array_equal(mask_img.affine, GRID_AFFINE)
    mask = np.asarray(mask_img.dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert 15_000 < mask.sum() < 30_000  # an ellipsoid of ~1.6 litres at 64 mm^3
    data = np.asarray(img.dataobj)
    assert np.all(data[mask == 0] == 0)
    assert 900 < np.median(data[mask == 1][:, 10]) < 1100

    ijk = np.indices(GRID_SHAPE).reshape(3, -1).T
    xyz = ijk * 4.0 + GRID_AFFINE[:3, 3]
    for seed in DEMO_SEEDS:
        inside = np.linalg.norm(xyz - np.array(seed.xyz), axis=1) <= seed.radius
        assert inside.sum() >= 28
        assert mask.reshape(-1)[inside].all(), f"{seed.name} sphere leaves the brain mask"


def test_planted_correlations_at_seed_centres(full: DemoInfo) -> None:
    pairs = {frozenset(p) for p in PLANTED_PAIRS}
    names = [s.name for s in DEMO_SEEDS]
    assert set(full.independent_seeds) == set(names) - {n for p in PLANTED_PAIRS for n in p}
    raw_independent = []
    for bold in full.bold_files:
        data = np.asarray(nib.load(bold).dataobj)
        conf = _confounds(bold)
        keep = slice(full.n_nonsteady, None)
        seeds = np.column_stack([data[world_to_voxel(s.xyz)] for s in DEMO_SEEDS])[keep]
        nuisance_cols = MOTION + [
            c for c in conf.columns if c.startswith(("cosine", "motion_outlier"))
        ]
        nuisance = np.column_stack([np.ones(len(conf)), conf[nuisance_cols].to_numpy()])[keep]
        beta = np.linalg.lstsq(nuisance, seeds, rcond=None)[0]
        clean = np.corrcoef((seeds - nuisance @ beta).T)
        raw = np.corrcoef(seeds.T)
        for i, j in itertools.combinations(range(len(names)), 2):
            if frozenset((names[i], names[j])) in pairs:
                assert clean[i, j] > 0.5, (names[i], names[j], clean[i, j])
            else:
                assert abs(clean[i, j]) < 0.3, (names[i], names[j], clean[i, j])
                raw_independent.append(abs(raw[i, j]))
    # Without denoising, drift and motion make independent seeds look connected.
    assert max(raw_independent) > 0.5


def test_confounds_file_is_fmriprep_like(full: DemoInfo) -> None:
    bold = full.bold_files[0]
    conf = _confounds(bold)
    assert len(conf) == 100
    expanded = ["global_signal", "csf", "white_matter", *MOTION]
    for base in expanded:
        for name in (base, f"{base}_derivative1", f"{base}_power2", f"{base}_derivative1_power2"):
            assert name in conf.columns
    expected = {
        "csf_wm",
        "tcompcor",
        "framewise_displacement",
        "dvars",
        "std_dvars",
        "rmsd",
        *(f"a_comp_cor_{i:02d}" for i in range(6)),
        *(f"{p}_comp_cor_{i:02d}" for p in "cwt" for i in range(3)),
        *(f"cosine{i:02d}" for i in range(4)),
        "non_steady_state_outlier00",
        "non_steady_state_outlier01",
    }
    assert expected <= set(conf.columns)
    assert "a_comp_cor_06" not in conf.columns and "cosine04" not in conf.columns

    first_nan = [c for c in conf.columns if conf[c].isna().iloc[0]]
    assert sorted(first_nan) == sorted(
        [f"{b}_derivative1" for b in expanded]
        + [f"{b}_derivative1_power2" for b in expanded]
        + ["framewise_displacement", "dvars", "std_dvars", "rmsd"]
    )
    assert not conf.iloc[1:].isna().any().any()
    text = (bold.parent / "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv").read_text()
    assert text.splitlines()[1].count("n/a") == len(first_nan)

    np.testing.assert_array_equal(conf["non_steady_state_outlier00"], np.eye(100)[0])
    np.testing.assert_array_equal(conf["non_steady_state_outlier01"], np.eye(100)[1])
    gs = conf["global_signal"].to_numpy()
    assert gs[0] > 1.3 * np.median(gs) and gs[1] > 1.1 * np.median(gs)

    params = conf[MOTION].to_numpy()
    diff = np.abs(np.diff(params, axis=0))
    fd = diff[:, :3].sum(axis=1) + 50 * diff[:, 3:].sum(axis=1)
    np.testing.assert_allclose(conf["framewise_displacement"].to_numpy()[1:], fd, rtol=1e-6)
    spikes = np.flatnonzero(conf["framewise_displacement"].to_numpy() > 0.5)
    outliers = sorted(c for c in conf.columns if c.startswith("motion_outlier"))
    assert len(spikes) >= 3 and len(outliers) == len(spikes)
    for column, volume in zip(outliers, spikes, strict=True):
        np.testing.assert_array_equal(conf[column], np.eye(100)[volume])
    np.testing.assert_allclose(
        conf["trans_x_derivative1_power2"].iloc[1:], conf["trans_x_derivative1"].iloc[1:] ** 2
    )
    cos = conf[[f"cosine{i:02d}" for i in range(4)]].to_numpy()[2:]
    np.testing.assert_allclose(cos.T @ cos, np.eye(4), atol=1e-8)


def test_confounds_json_has_compcor_metadata(full: DemoInfo) -> None:
    bold = full.bold_files[0]
    meta = json.loads(
        (bold.parent / "sub-01_task-rest_run-1_desc-confounds_timeseries.json").read_text()
    )
    masks = {"a": "combined", "c": "CSF", "w": "WM"}
    for prefix, count in (("a", 6), ("c", 3), ("w", 3), ("t", 3)):
        cumulative = 0.0
        for i in range(count):
            entry = meta[f"{prefix}_comp_cor_{i:02d}"]
            assert entry["Method"] == ("tCompCor" if prefix == "t" else "aCompCor")
            assert entry.get("Mask") == masks.get(prefix)
            assert entry["Retained"] is True
            assert entry["SingularValue"] > 0 and 0 < entry["VarianceExplained"] < 1
            cumulative += entry["VarianceExplained"]
            assert entry["CumulativeVarianceExplained"] == pytest.approx(cumulative, abs=1e-8)
    dropped = [v for k, v in meta.items() if k.startswith("dropped_")]
    assert len(dropped) == 4 and all(d["Retained"] is False for d in dropped)
    assert meta["global_signal"] == {"Method": "Mean"}

    conf = _confounds(bold)
    comps = conf[[f"a_comp_cor_{i:02d}" for i in range(6)]].to_numpy()
    np.testing.assert_allclose(comps[:2], 0.0)
    np.testing.assert_allclose(comps.T @ comps, np.eye(6), atol=1e-6)


def test_nilearn_reads_the_confounds(full: DemoInfo) -> None:
    from nilearn.interfaces.fmriprep import load_confounds  # the test extra

    bold = str(full.bold_files[0])
    confounds, sample_mask = load_confounds(
        bold,
        strategy=("motion", "high_pass", "wm_csf", "compcor"),
        compcor="anat_combined",
        n_compcor="all",
    )
    assert [c for c in confounds.columns if "comp_cor" in c] == [
        f"a_comp_cor_{i:02d}" for i in range(6)
    ]
    assert len(sample_mask) == 98 and sample_mask[0] == 2
    _, scrubbed = load_confounds(
        bold, strategy=("motion", "scrub"), scrub=0, fd_threshold=0.5, std_dvars_threshold=100
    )
    fd = _confounds(full.bold_files[0])["framewise_displacement"].to_numpy()
    high = set(np.flatnonzero(fd > 0.5))
    assert high and not high & set(scrubbed)


def test_seed_files(full: DemoInfo) -> None:
    table = pd.read_csv(full.seeds_tsv, sep="\t")
    assert list(table.columns) == ["name", "x", "y", "z", "radius", "network"]
    assert table["name"].tolist() == [s.name for s in DEMO_SEEDS]
    pcc = table.set_index("name").loc["PCC"]
    assert (pcc.x, pcc.y, pcc.z, pcc.radius) == (0, -52, 26, 8)
    sidecar = json.loads(full.seeds_tsv.with_suffix(".json").read_text())
    assert sidecar["Space"] == "MNI152NLin2009cAsym"
    assert sidecar["PlantedPairs"] == [list(p) for p in PLANTED_PAIRS]
    assert full.planted_pairs == PLANTED_PAIRS
    assert world_to_voxel((0, -52, 26)) == (24, 20, 26)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "bids"}, "demo layout 'bids' is unknown"),
        ({"n_volumes": 10}, "demo n_volumes=10 is out of range"),
        ({"n_subjects": 0}, "demo n_subjects=0 is out of range"),
        ({"n_runs": 1.5}, "demo n_runs=1.5 is not an integer"),
        ({"t_r": -2.0}, "demo t_r=-2.0 is not a repetition time"),
        ({"sessions": ["../x"]}, "demo session label '../x' is not alphanumeric"),
        ({"sessions": ["1", "1"]}, "repeat"),
    ],
)
def test_bad_arguments_raise_usage_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        build_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_refuses_a_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not an empty directory"):
        build_dataset(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
