"""bids_spheres.app.confounds: nilearn parity on fMRIPrep's real files, presets, errors."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import nilearn.interfaces.fmriprep as nilearn_fmriprep
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy
from nilearn.interfaces.fmriprep.load_confounds_scrub import optimize_scrub

from bids_spheres.app import confounds as C
from bids_spheres.errors import DataError, MissingInputError, UsageError

NILEARN_DATA = Path(nilearn_fmriprep.__file__).parent / "data"

# name -> (tsv in nilearn's data, json sidecar, our suffix)
CASES = {
    "v21": (
        "test-v21_desc-confounds_timeseries.tsv",
        "test-v21_desc-confounds_timeseries.json",
        "timeseries",
    ),
    "v14": (
        "test_desc-confounds_regressors.tsv",
        "test_desc-confounds_regressors.json",
        "regressors",
    ),
    "no_nonsteady": (
        "no_nonsteady_desc-confounds_regressors.tsv",
        "test_desc-confounds_regressors.json",
        "regressors",
    ),
}

MOTION24 = [
    f"{b}{s}"
    for b in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
    for s in ("", "_derivative1", "_power2", "_derivative1_power2")
]
WMCSF8 = [
    f"{b}{s}"
    for b in ("csf", "white_matter")
    for s in ("", "_derivative1", "_power2", "_derivative1_power2")
]
GS4 = [f"global_signal{s}" for s in ("", "_derivative1", "_power2", "_derivative1_power2")]


class Run:
    """An fMRIPrep-like func folder holding one of nilearn's confounds files."""

    def __init__(self, folder: Path, case: str):
        tsv, sidecar, suffix = CASES[case]
        folder.mkdir(parents=True, exist_ok=True)
        self.tsv = folder / f"sub-01_task-rest_desc-confounds_{suffix}.tsv"
        shutil.copy(NILEARN_DATA / tsv, self.tsv)
        shutil.copy(NILEARN_DATA / sidecar, self.tsv.with_suffix(".json"))
        self.bold = folder / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
        self.aroma = (
            folder / "sub-01_task-rest_space-MNI152NLin6Asym_desc-smoothAROMAnonaggr_bold.nii.gz"
        )
        self.bold.touch()
        self.aroma.touch()
        self.raw = pd.read_csv(self.tsv, sep="\t")


@pytest.fixture(params=list(CASES))
def run(request, tmp_path) -> Run:
    return Run(tmp_path / request.param, request.param)


@pytest.fixture
def v21(tmp_path) -> Run:
    return Run(tmp_path / "v21", "v21")


@pytest.fixture
def v14(tmp_path) -> Run:
    return Run(tmp_path / "v14", "v14")


def _assert_same_as_nilearn(sel: C.ConfoundSelection, nl_conf, nl_mask) -> None:
    if nl_conf is None:
        assert sel.confounds.shape[1] == 0
    else:
        assert sorted(sel.confounds.columns) == list(nl_conf.columns)
        np.testing.assert_allclose(
            sel.confounds[nl_conf.columns].to_numpy(), nl_conf.to_numpy(), rtol=0, atol=1e-12
        )
    ours = np.arange(sel.n_volumes) if sel.sample_mask is None else sel.sample_mask
    theirs = np.arange(sel.n_volumes) if nl_mask is None else np.asarray(nl_mask)
    np.testing.assert_array_equal(ours, theirs)


def _nilearn_strategy(run: Run, name: str, **kwargs):
    img = run.aroma if name == "ica_aroma" else run.bold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_confounds_strategy(str(img), name, **kwargs)


def _nilearn_confounds(run: Run, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_confounds(str(run.bold), **kwargs)


# --------------------------------------------------------------------------- nilearn parity

PRESET_PARITY = [
    # (our preset, nilearn preset, nilearn kwargs, our overrides)
    ("simple", "simple", {}, {}),
    ("simple+gsr", "simple", {"global_signal": "basic"}, {}),
    ("scrubbing", "scrubbing", {}, {}),
    (
        "scrubbing",
        "scrubbing",
        {"fd_threshold": 3.0, "std_dvars_threshold": 3.0},
        {"fd_threshold": 3.0, "dvars_threshold": 3.0},
    ),
    (
        "scrubbing",
        "scrubbing",
        {"fd_threshold": 0.15, "std_dvars_threshold": 1.2},
        {"fd_threshold": 0.15, "dvars_threshold": 1.2},
    ),
    (
        "scrubbing+gsr",
        "scrubbing",
        {"global_signal": "basic", "fd_threshold": 3.0, "std_dvars_threshold": 3.0},
        {"fd_threshold": 3.0, "dvars_threshold": 3.0},
    ),
    ("compcor", "compcor", {}, {}),
    ("aroma", "ica_aroma", {}, {}),
]


@pytest.mark.parametrize(("ours", "theirs", "nl_kwargs", "overrides"), PRESET_PARITY)
def test_presets_match_nilearn_load_confounds_strategy(run, ours, theirs, nl_kwargs, overrides):
    nl_conf, nl_mask = _nilearn_strategy(run, theirs, **nl_kwargs)
    if nl_mask is not None and len(nl_mask) == 0:
        # nilearn scrubs every volume of this file; we refuse the run instead.
        with pytest.raises(C.TooFewVolumesError):
            C.select(run.tsv, C.load_strategy(ours), min_volumes=1, **overrides)
        return
    sel = C.select(run.tsv, C.load_strategy(ours), min_volumes=1, **overrides)
    _assert_same_as_nilearn(sel, nl_conf, nl_mask)


CUSTOM_PARITY = [
    # (our strategy dict, nilearn load_confounds kwargs)
    ({"high_pass": True, "motion": "full"}, {"strategy": ("high_pass", "motion")}),
    (
        {"high_pass": True, "motion": "full", "wm_csf": "full", "global_signal": "full"},
        {
            "strategy": ("high_pass", "motion", "wm_csf", "global_signal"),
            "wm_csf": "full",
            "global_signal": "full",
        },
    ),
    (
        {"motion": "derivatives", "wm_csf": "power2"},
        {"strategy": ("motion", "wm_csf"), "motion": "derivatives", "wm_csf": "power2"},
    ),
    ({"motion": "basic"}, {"strategy": ("motion",), "motion": "basic"}),
]
COMPCOR_PARITY = [
    ("anat_combined", 2),
    ("anat_separated", "all"),
    ("anat_separated", 2),
    ("temporal", "all"),
    ("temporal_anat_combined", 3),
    ("temporal_anat_separated", "all"),
    ("temporal_anat_separated", 1),
]


@pytest.mark.parametrize(("ours", "nl_kwargs"), CUSTOM_PARITY)
def test_custom_models_match_nilearn_load_confounds(run, ours, nl_kwargs):
    nl_conf, nl_mask = _nilearn_confounds(run, **nl_kwargs)
    sel = C.select(run.tsv, C.Strategy.from_dict({"name": "x", **ours}), min_volumes=1)
    _assert_same_as_nilearn(sel, nl_conf, nl_mask)


@pytest.mark.parametrize(("compcor", "n_compcor"), COMPCOR_PARITY)
def test_compcor_variants_match_nilearn(run, compcor, n_compcor):
    nl_conf, nl_mask = _nilearn_confounds(
        run, strategy=("high_pass", "compcor"), compcor=compcor, n_compcor=n_compcor
    )
    strategy = C.Strategy.from_dict(
        {"name": "cc", "high_pass": True, "compcor": compcor, "n_compcor": n_compcor}
    )
    sel = C.select(run.tsv, strategy, min_volumes=1)
    _assert_same_as_nilearn(sel, nl_conf, nl_mask)


@pytest.mark.parametrize("scrub", [0, 1, 3, 5, 8])
def test_scrub_segment_lengths_match_nilearn(v14, scrub):
    nl_conf, nl_mask = _nilearn_confounds(
        v14,
        strategy=("motion", "scrub"),
        motion="basic",
        scrub=scrub,
        fd_threshold=0.15,
        std_dvars_threshold=1.2,
    )
    strategy = C.Strategy.from_dict(
        {
            "name": "s",
            "motion": "basic",
            "scrub": scrub,
            "fd_threshold": 0.15,
            "std_dvars_threshold": 1.2,
        }
    )
    sel = C.select(v14.tsv, strategy, min_volumes=1)
    _assert_same_as_nilearn(sel, nl_conf, nl_mask)


def test_ica_aroma_basic_matches_nilearn(v14):
    nl_conf, nl_mask = _nilearn_confounds(v14, strategy=("ica_aroma",), ica_aroma="basic")
    sel = C.select(v14.tsv, C.Strategy.from_dict({"name": "a", "ica_aroma": "basic"}))
    _assert_same_as_nilearn(sel, nl_conf, nl_mask)
    assert sel.confounds.shape[1] == 13
    assert sel.strategy.requires_bold_desc is None


def test_none_preset_keeps_only_steady_volumes_like_nilearn_empty_strategy(run):
    _, nl_mask = _nilearn_confounds(run, strategy=())
    sel = C.select(run.tsv, C.load_strategy("none"), min_volumes=1)
    _assert_same_as_nilearn(sel, None, nl_mask)
    assert sel.confounds.shape == (30, 0)


@settings(max_examples=200, deadline=None)
@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=40).filter(any),
    scrub=st.integers(min_value=1, max_value=8),
)
def test_drop_short_segments_equals_nilearn_optimize_scrub(flags, scrub):
    flagged = np.array(flags)
    expected = optimize_scrub(np.flatnonzero(flagged), len(flags), scrub)
    np.testing.assert_array_equal(np.flatnonzero(C.drop_short_segments(flagged, scrub)), expected)


# --------------------------------------------------------------------------- presets


def test_list_presets_names():
    assert C.list_presets() == [
        "24p",
        "36p",
        "aroma",
        "compcor",
        "none",
        "scrubbing",
        "scrubbing+gsr",
        "simple",
        "simple+gsr",
    ]


@pytest.mark.parametrize("name", C.list_presets())
def test_preset_files_round_trip_and_name_matches_file(name):
    strategy = C.load_strategy(name)
    assert strategy.name == name
    assert strategy.source == "preset"
    assert C.Strategy.from_dict(strategy.to_dict()) == strategy
    assert list(strategy.to_dict()) == list(C.STRATEGY_KEYS)
    assert strategy.description


EXPECTED_V21_COLUMNS = {
    "none": [],
    "simple": ["cosine00", *MOTION24, "csf", "white_matter"],
    "simple+gsr": ["cosine00", *MOTION24, "csf", "white_matter", "global_signal"],
    "scrubbing": ["cosine00", *MOTION24, *WMCSF8],
    "scrubbing+gsr": ["cosine00", *MOTION24, *WMCSF8, "global_signal"],
    "compcor": ["cosine00", *MOTION24, *[f"a_comp_cor_0{i}" for i in range(5)]],
    "aroma": ["cosine00", "csf", "white_matter"],
    "24p": ["cosine00", *MOTION24],
    "36p": ["cosine00", *MOTION24, *WMCSF8, *GS4],
}


@pytest.mark.parametrize(("name", "columns"), list(EXPECTED_V21_COLUMNS.items()))
def test_each_preset_selects_exactly_these_columns(v21, name, columns):
    overrides = {"fd_threshold": 3.0, "dvars_threshold": 3.0} if "scrubbing" in name else {}
    sel = C.select(v21.tsv, C.load_strategy(name), min_volumes=1, **overrides)
    assert list(sel.confounds.columns) == columns
    assert sel.provenance["columns"] == columns
    assert sel.provenance["n_columns"] == len(columns)


def test_preset_parameters():
    scrubbing = C.load_strategy("scrubbing")
    assert (scrubbing.scrub, scrubbing.fd_threshold, scrubbing.std_dvars_threshold) == (
        5,
        0.5,
        1.5,
    )
    assert C.load_strategy("scrubbing+gsr").global_signal == "basic"
    assert C.load_strategy("36p").global_signal == "full"
    aroma = C.load_strategy("aroma")
    assert aroma.requires_bold_desc == "smoothAROMAnonaggr"
    assert aroma.ica_aroma == "full"
    assert all(
        C.load_strategy(n).requires_bold_desc is None for n in C.list_presets() if n != "aroma"
    )
    assert not any(C.load_strategy(n).scrubs for n in C.list_presets() if "scrubbing" not in n)


# --------------------------------------------------------------------------- volumes


def test_scrubbing_hand_computed(v14):
    # FD > 0.15 at 1, 11, 13, 19, 28; std DVARS > 1.2 at 1, 2; volume 0 is non-steady.
    # Unflagged runs: [0] (1), [3..10] (8), [12] (1), [14..18] (5), [20..27] (8), [29] (1).
    sel = C.select(v14.tsv, C.load_strategy("scrubbing"), fd_threshold=0.15, dvars_threshold=1.2)
    np.testing.assert_array_equal(sel.nonsteady, [0])
    np.testing.assert_array_equal(sel.scrubbed, [1, 2, 11, 12, 13, 19, 28, 29])
    expected = [*range(3, 11), *range(14, 19), *range(20, 28)]
    np.testing.assert_array_equal(sel.sample_mask, expected)
    assert sel.n_kept == 21
    prov = sel.provenance
    assert (prov["n_flagged_fd"], prov["n_flagged_dvars"], prov["n_scrubbed"]) == (5, 2, 8)
    assert prov["fd_threshold"] == 0.15
    assert prov["std_dvars_threshold"] == 1.2
    assert prov["fd_threshold_from"] == "command line"
    assert prov["scrubbed_volumes"] == [1, 2, 11, 12, 13, 19, 28, 29]


@pytest.mark.parametrize(
    ("flags", "min_length", "dropped"),
    [
        ("..x......x..", 3, [0, 1, 2, 9, 10, 11]),  # short ends go
        ("...x..x....", 3, [3, 4, 5, 6]),  # short middle goes, ends of 3 and 4 stay
        ("...x..x....", 2, [3, 6]),  # a run of exactly min_length stays
        ("x.x.x", 0, [0, 2, 4]),  # 0: only the flagged volumes
        ("......", 10, []),  # nothing flagged: nothing dropped, even if short
        ("xx", 5, [0, 1]),
        (".x.", 1, [1]),
    ],
)
def test_drop_short_segments_hand_computed(flags, min_length, dropped):
    flagged = np.array([c == "x" for c in flags])
    np.testing.assert_array_equal(
        np.flatnonzero(C.drop_short_segments(flagged, min_length)), dropped
    )


def test_nonsteady_columns_always_dropped_and_dummy_scans_extend(v21):
    strategy = C.load_strategy("simple")
    sel = C.select(v21.tsv, strategy)
    np.testing.assert_array_equal(sel.nonsteady, [0, 1, 2])
    np.testing.assert_array_equal(sel.sample_mask, np.arange(3, 30))
    fewer = C.select(v21.tsv, strategy, dummy_scans=1)
    np.testing.assert_array_equal(fewer.nonsteady, [0, 1, 2])
    more = C.select(v21.tsv, strategy, dummy_scans=5)
    np.testing.assert_array_equal(more.nonsteady, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(more.sample_mask, np.arange(5, 30))
    assert more.provenance["dummy_scans"] == 5
    assert more.provenance["nonsteady_volumes"] == [0, 1, 2, 3, 4]


def test_no_volume_dropped_gives_none_sample_mask(tmp_path):
    run = Run(tmp_path, "no_nonsteady")
    sel = C.select(run.tsv, C.load_strategy("simple"))
    assert sel.sample_mask is None
    assert sel.n_kept == 30
    assert sel.nonsteady.size == 0 and sel.scrubbed.size == 0
    np.testing.assert_allclose(sel.confounds.mean(axis=0).to_numpy(), 0, atol=1e-12)


def test_demean_uses_kept_volumes_and_first_row_filled(v21):
    raw = v21.raw
    strategy = C.Strategy.from_dict({"name": "d", "motion": "derivatives"})
    sel = C.select(v21.tsv, strategy)
    kept = sel.sample_mask
    np.testing.assert_allclose(sel.confounds.iloc[kept].mean(axis=0).to_numpy(), 0, atol=1e-12)
    raw_col = raw["trans_x_derivative1"].to_numpy()
    assert math.isnan(raw_col[0])
    expected = raw_col.copy()
    expected[0] = expected[1]
    np.testing.assert_allclose(
        sel.confounds["trans_x_derivative1"].to_numpy(), expected - expected[3:].mean()
    )
    assert "trans_x_derivative1" in sel.provenance["first_row_filled"]
    assert "trans_x" not in sel.provenance["first_row_filled"]


def test_no_demean_keeps_raw_values(v21):
    strategy = C.Strategy.from_dict({"name": "raw", "wm_csf": "basic", "demean": False})
    sel = C.select(v21.tsv, strategy)
    np.testing.assert_array_equal(sel.confounds["csf"].to_numpy(), v21.raw["csf"].to_numpy())
    assert sel.provenance["demeaned"] is False


def test_too_few_volumes_error(v21):
    # Default scrubbing flags every volume of this high-motion file.
    with pytest.raises(C.TooFewVolumesError) as info:
        C.select(v21.tsv, C.load_strategy("scrubbing"))
    err = info.value
    assert isinstance(err, DataError) and err.exit_code == 65
    assert (err.n_volumes, err.n_kept, err.min_volumes) == (30, 0, C.DEFAULT_MIN_VOLUMES)
    assert err.path == v21.tsv
    assert "only 0 of 30 volumes remain" in str(err)
    assert "3 non-steady-state and 27 scrubbed" in str(err)
    assert "fd_threshold=0.5" in str(err) and "min_volumes" in str(err)
    assert "\n" not in str(err)


def test_min_volumes_threshold(v21):
    strategy = C.load_strategy("simple")
    assert C.select(v21.tsv, strategy, min_volumes=27).n_kept == 27
    with pytest.raises(C.TooFewVolumesError, match="only 27 of 30"):
        C.select(v21.tsv, strategy, min_volumes=28)


def test_fd_summary_and_provenance_is_json(v21):
    sel = C.select(v21.tsv, C.load_strategy("simple"))
    fd = v21.raw["framewise_displacement"].to_numpy()
    assert sel.mean_fd == pytest.approx(np.nanmean(fd))
    assert sel.max_fd == pytest.approx(np.nanmax(fd))
    assert sel.provenance["mean_fd_kept"] == pytest.approx(np.nanmean(fd[3:]))
    text = json.dumps(sel.provenance, allow_nan=False)
    prov = json.loads(text)
    assert prov["strategy"]["name"] == "simple"
    assert prov["strategy_source"] == "preset"
    # Thresholds are written even when scrubbing is off.
    assert prov["scrubbing"] is False
    assert prov["fd_threshold"] is None and prov["std_dvars_threshold"] is None
    assert prov["n_volumes"] == 30 and prov["n_kept"] == 27 and prov["n_nonsteady"] == 3
    assert prov["confounds_format"].startswith("fMRIPrep >= 20.2")


def test_threshold_overrides(v14):
    strategy = C.load_strategy("scrubbing")
    only_dvars = C.select(v14.tsv, strategy, fd_threshold=math.inf, dvars_threshold=1.2)
    # std DVARS > 1.2 only at 1 and 2; volume 0 is non-steady, 3..29 is one long run.
    np.testing.assert_array_equal(only_dvars.scrubbed, [1, 2])
    np.testing.assert_array_equal(only_dvars.sample_mask, np.arange(3, 30))
    assert only_dvars.provenance["fd_threshold"] is None
    with pytest.raises(UsageError, match="does not scrub"):
        C.select(v14.tsv, C.load_strategy("simple"), fd_threshold=0.3)
    with pytest.raises(UsageError, match=r"fd_threshold must be a number > 0, got -1"):
        C.select(v14.tsv, strategy, fd_threshold=-1)
    with pytest.raises(UsageError, match="both fd_threshold and dvars_threshold"):
        C.select(v14.tsv, strategy, fd_threshold=math.inf, dvars_threshold=math.inf)
    with pytest.raises(UsageError, match="dummy_scans must be an integer >= 0"):
        C.select(v14.tsv, strategy, dummy_scans=-2)
    with pytest.raises(UsageError, match="min_volumes must be an integer >= 1"):
        C.select(v14.tsv, strategy, min_volumes=0)


def test_compcor_variance_selection(v21):
    # Cumulative variance in the sidecar: a 0.203 0.333 0.424 0.489 0.537,
    # WM 0.260 0.375 0.462 0.517, CSF 0.238 0.417 0.513.
    strategy = C.Strategy.from_dict(
        {"name": "v", "high_pass": True, "compcor": "anat_separated", "compcor_variance": 0.4}
    )
    sel = C.select(v21.tsv, strategy)
    assert list(sel.confounds.columns) == [
        "cosine00",
        "w_comp_cor_00",
        "w_comp_cor_01",
        "w_comp_cor_02",
        "c_comp_cor_00",
        "c_comp_cor_01",
    ]
    combined = C.Strategy.from_dict(
        {"name": "v", "high_pass": True, "compcor": "anat_combined", "compcor_variance": 0.33}
    )
    assert list(C.select(v21.tsv, combined).confounds.columns)[1:] == [
        "a_comp_cor_00",
        "a_comp_cor_01",
    ]
    too_much = C.Strategy.from_dict(
        {"name": "v", "high_pass": True, "compcor": "anat_combined", "compcor_variance": 0.6}
    )
    with pytest.raises(DataError, match=r"exceeds the 0\.537 .*--return-all-components"):
        C.select(v21.tsv, too_much)


def test_select_checks_the_rows_against_the_bold_first(v21):
    """A truncated table is refused as such, before its values or kept volumes are judged
    (a few rows would otherwise read as 'too few volumes', a skip, not a failure)."""
    with pytest.raises(DataError, match=r"has 30 rows but bold\.nii\.gz has 240 volumes.*trunc"):
        C.select(
            v21.tsv, C.load_strategy("simple"), bold_volumes=240, bold_file="bold.nii.gz",
            min_volumes=100,
        )  # fmt: skip
    assert C.select(v21.tsv, C.load_strategy("simple"), bold_volumes=30).n_volumes == 30


def test_check_length(v21):
    sel = C.select(v21.tsv, C.load_strategy("simple"))
    C.check_length(sel, 30, "bold.nii.gz")
    with pytest.raises(DataError, match=r"has 30 rows but bold\.nii\.gz has 29 volumes"):
        C.check_length(sel, 29, "bold.nii.gz")


# --------------------------------------------------------------------------- legacy files


def test_fmriprep_1_0_camelcase_file(tmp_path, v21):
    rename = {
        "trans_x": "X",
        "trans_y": "Y",
        "trans_z": "Z",
        "rot_x": "RotX",
        "rot_y": "RotY",
        "rot_z": "RotZ",
        "csf": "CSF",
        "white_matter": "WhiteMatter",
        "global_signal": "GlobalSignal",
        "std_dvars": "stdDVARS",
        "framewise_displacement": "FramewiseDisplacement",
        "cosine00": "Cosine00",
        "non_steady_state_outlier00": "NonSteadyStateOutlier00",
        "non_steady_state_outlier01": "NonSteadyStateOutlier01",
        "non_steady_state_outlier02": "NonSteadyStateOutlier02",
        "a_comp_cor_00": "aCompCor00",
        "a_comp_cor_01": "aCompCor01",
    }
    legacy = v21.raw[list(rename)].rename(columns=rename)
    path = tmp_path / "legacy" / "sub-01_task-rest_bold_confounds.tsv"
    path.parent.mkdir()
    legacy.to_csv(path, sep="\t", index=False, na_rep="n/a")
    for name in ("36p", "scrubbing"):
        strategy = C.load_strategy(name)
        overrides = {"fd_threshold": 3.0, "dvars_threshold": 3.0} if strategy.scrubs else {}
        old = C.select(path, strategy, min_volumes=1, **overrides)
        new = C.select(v21.tsv, strategy, min_volumes=1, **overrides)
        assert list(old.confounds.columns) == list(new.confounds.columns)
        np.testing.assert_allclose(old.confounds.to_numpy(), new.confounds.to_numpy(), atol=1e-6)
        np.testing.assert_array_equal(old.sample_mask, new.sample_mask)
        assert old.provenance["confounds_format"].startswith("fMRIPrep 1.0-1.1")
        assert "trans_x_derivative1" in old.provenance["computed_columns"]
    compcor = C.Strategy.from_dict(
        {"name": "c", "high_pass": True, "compcor": "anat_combined", "n_compcor": 1}
    )
    assert list(C.select(path, compcor).confounds.columns) == ["cosine00", "a_comp_cor_00"]
    separated = C.Strategy.from_dict({"name": "c", "high_pass": True, "compcor": "anat_separated"})
    with pytest.raises(DataError, match=r"fMRIPrep 1\.0/1\.1 output"):
        C.select(path, separated)


# --------------------------------------------------------------------------- custom strategies


def test_custom_json_strategy(tmp_path, v21):
    spec = {
        "name": "mine",
        "description": "motion and FD-only scrubbing",
        "motion": "basic",
        "scrub": 0,
        "fd_threshold": 4.0,
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    strategy = C.load_strategy(path)
    assert strategy.source == str(path.resolve())
    assert (strategy.std_dvars_threshold, strategy.high_pass, strategy.demean) == (
        None,
        False,
        True,
    )
    sel = C.select(v21.tsv, strategy)
    assert list(sel.confounds.columns) == [
        "trans_x",
        "trans_y",
        "trans_z",
        "rot_x",
        "rot_y",
        "rot_z",
    ]
    # FD > 4 at volumes 2 (4.57), 11 (7.25), 12 (5.59); scrub 0 drops only those.
    np.testing.assert_array_equal(sel.scrubbed, [11, 12])
    np.testing.assert_array_equal(sel.nonsteady, [0, 1, 2])
    assert sel.provenance["strategy_source"] == str(path.resolve())
    assert C.load_strategy(str(path)) == strategy


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"name": "x", "motoin": "full"}', r"unknown key\(s\) 'motoin'; allowed keys: name, "),
        ('{"name": "x", "motion": "fulll"}', r"'motion' is \"fulll\"; expected null or one of "),
        ('{"name": "x", "compcor": "anat"}', r"'compcor' is \"anat\"; expected null or one of"),
        ('{"name": "x", "ica_aroma": "aggr"}', r"'ica_aroma' is \"aggr\"; .*'full', 'basic'"),
        ('{"name": "x", "high_pass": "yes"}', r"'high_pass' is \"yes\"; expected true or false"),
        ('{"name": "x", "scrub": 2.5, "fd_threshold": 0.5}', r"'scrub' is 2.5; expected null"),
        ('{"name": "x", "scrub": 5, "fd_threshold": -1}', r"'fd_threshold' is -1; expected null"),
        ('{"name": "x", "n_compcor": 0}', r"'n_compcor' is 0; expected 'all' or an integer"),
        ('{"name": "x", "compcor_variance": 1.5}', r"'compcor_variance' is 1.5; expected null"),
        ('{"name": "x", "compcor": "temporal"}', r"'compcor' needs 'high_pass': true"),
        ('{"name": "x", "fd_threshold": 0.5}', r"thresholds to null"),
        ('{"name": "x", "scrub": 5}', r"'scrub' is 5 but 'fd_threshold' and 'std_dvars_thr"),
        ('{"name": "x", "n_compcor": 3}', r"'compcor' is null"),
        (
            '{"name": "x", "high_pass": true, "compcor": "temporal", "n_compcor": 2, '
            '"compcor_variance": 0.5}',
            r"either 'n_compcor' or 'compcor_variance', not both",
        ),
        ('{"motion": "full"}', r"missing required key 'name'"),
        ('{"name": ""}', r"'name' is \"\"; expected a non-empty string"),
        ("[1, 2]", r"top level must be a JSON object"),
        ('{"name": "x",}', r"is not valid JSON"),
    ],
)
def test_custom_json_validation_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        C.load_strategy(path)
    assert str(path.resolve()) in str(info.value) or str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_strategy_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(
        UsageError, match=r"unknown denoising strategy 'simpel'; choose one of 24p"
    ):
        C.load_strategy("simpel")
    missing = tmp_path / "nope.json"
    with pytest.raises(MissingInputError, match=r"strategy file .*nope\.json does not exist"):
        C.load_strategy(missing)


# --------------------------------------------------------------------------- bad inputs


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_confounds_file(tmp_path):
    path = tmp_path / "sub-01_desc-confounds_timeseries.tsv"
    with pytest.raises(
        MissingInputError, match=r"confounds file .*timeseries\.tsv does not exist"
    ):
        C.select(path, C.load_strategy("simple"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is empty"),
        ("trans_x\ttrans_y\n", r"has a header but no rows"),
        ("0.1\t0.2\n0.3\t0.4\n", r"has no header row"),
        ("a\tb\n1\t2\n3\t4\t5\n", r"is not a valid tab-separated table"),
        ("a\tb\n1\t2\t3\n", r"is not a valid tab-separated table"),
    ],
)
def test_unreadable_confounds_files(tmp_path, text, message):
    path = _write(tmp_path / "sub-01_desc-confounds_timeseries.tsv", text)
    with pytest.raises(DataError, match=message) as info:
        C.select(path, C.load_strategy("simple"))
    assert str(path) in str(info.value)


def test_missing_columns_are_named_with_version_hint(tmp_path, v21):
    raw = v21.raw.drop(columns=["rot_z_power2", "white_matter"])
    path = tmp_path / "x" / "sub-01_desc-confounds_regressors.tsv"
    path.parent.mkdir()
    raw.to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(DataError) as info:
        C.select(path, C.load_strategy("simple"))
    msg = str(info.value)
    assert "lacks column(s) needed by strategy 'simple': rot_z_power2, white_matter" in msg
    assert "fMRIPrep 1.2-20.1" in msg and "fMRIPrep >= 1.2 writes" in msg
    raw = v21.raw.drop(columns=["std_dvars"])
    raw.to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(DataError, match=r"lacks the column\(s\) std_dvars needed for scrubbing"):
        C.select(path, C.load_strategy("scrubbing"))
    aroma_basic = C.Strategy.from_dict({"name": "a", "ica_aroma": "basic"})
    with pytest.raises(DataError, match=r"aroma_motion_\*"):
        C.select(v21.tsv, aroma_basic)


def test_non_numeric_value(tmp_path, v21):
    raw = v21.raw.astype({"csf": object})
    raw.loc[7, "csf"] = "oops"
    path = tmp_path / "x" / "sub-01_desc-confounds_timeseries.tsv"
    path.parent.mkdir()
    raw.to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(DataError, match=r"column 'csf' holds the non-numeric value 'oops' at vol"):
        C.select(path, C.load_strategy("simple"))
    # A column the strategy does not use may hold anything.
    assert C.select(path, C.load_strategy("24p")).confounds.shape == (30, 25)


def test_missing_value_after_first_row(tmp_path, v21):
    raw = v21.raw.copy()
    raw.loc[12, "white_matter"] = np.nan
    path = tmp_path / "x" / "sub-01_desc-confounds_timeseries.tsv"
    path.parent.mkdir()
    raw.to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(
        DataError, match=r"white_matter have missing or infinite values .*volume 12"
    ):
        C.select(path, C.load_strategy("simple"))


def test_compcor_needs_sidecar(tmp_path, v21):
    v21.tsv.with_suffix(".json").unlink()
    with pytest.raises(DataError, match=r"needs the JSON sidecar .*timeseries\.json .*>= 1\.4"):
        C.select(v21.tsv, C.load_strategy("compcor"))
    v21.tsv.with_suffix(".json").write_text("{not json")
    with pytest.raises(DataError, match=r"sidecar .* is not valid JSON"):
        C.select(v21.tsv, C.load_strategy("compcor"))


def test_anat_separated_order_is_wm_then_csf(v14):
    # fMRIPrep 1.4 numbers all masks a_comp_cor_NN: combined 00-56, CSF 57-69, WM 70-125.
    strategy = C.Strategy.from_dict(
        {"name": "s", "high_pass": True, "compcor": "anat_separated", "n_compcor": 2}
    )
    sel = C.select(v14.tsv, strategy)
    assert list(sel.confounds.columns)[4:] == [
        "a_comp_cor_70",
        "a_comp_cor_71",
        "a_comp_cor_57",
        "a_comp_cor_58",
    ]


def test_threshold_is_strictly_greater_than(tmp_path):
    fd = [math.nan, 0.5, 0.2, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    dvars = [math.nan, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.6, 1.0]
    frame = pd.DataFrame({"framewise_displacement": fd, "std_dvars": dvars})
    path = tmp_path / "sub-01_desc-confounds_timeseries.tsv"
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    strategy = C.Strategy.from_dict(
        {"name": "t", "scrub": 0, "fd_threshold": 0.5, "std_dvars_threshold": 1.5}
    )
    sel = C.select(path, strategy, min_volumes=1)
    # FD 0.5 and DVARS 1.5 equal the thresholds and stay; FD 0.6 and DVARS 1.6 go.
    np.testing.assert_array_equal(sel.scrubbed, [3, 10])
    assert sel.confounds.shape == (12, 0)
    assert sel.mean_fd == pytest.approx(np.nanmean(fd))
    assert sel.max_fd == 0.6
