"""bids_spheres.app.native: the direction rule and the mapping, on analytic ANTs composites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from native_helpers import affine, to_native, write_pair

from bids_spheres.app import native, seeds
from bids_spheres.errors import DataError, MissingInputError

POWER = seeds.load("power2011").coords_mm


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    a = affine()
    forward, backward = write_pair(tmp_path_factory.mktemp("xfm") / "anat", "sub-01", a)
    return forward, backward, a


def test_from_t1w_to_template_file_maps_template_seeds_to_the_analytic_t1w_points(pair) -> None:
    forward, _, a = pair
    points = np.vstack([POWER, [[0.0, -51.0, 27.0]]])  # the last one on a field voxel
    mapped = native.map_points(forward, points)
    error = np.linalg.norm(mapped - to_native(points, a), axis=1)
    assert error.max() < 0.1
    mapped = mapped[:-1]
    # the warp matters: without it the seeds would be off by millimetres
    affine_only = POWER @ a[:3, :3].T + a[:3, 3]
    assert np.linalg.norm(mapped - affine_only, axis=1).max() > 3.0


def test_forth_and_back_through_the_pair_returns_within_half_a_millimetre(pair) -> None:
    forward, backward, _ = pair
    there = native.map_points(forward, POWER)
    back = native.map_points(backward, there)
    assert np.linalg.norm(back - POWER, axis=1).max() < 0.5
    assert np.linalg.norm(there - POWER, axis=1).min() > 5.0  # it did move them


def test_the_other_file_is_the_wrong_direction(pair) -> None:
    # the direction rule: template -> T1w points use from-T1w_to-<template>; the file named
    # the other way (from-<template>_to-T1w) lands centimetres away from the right places
    _, backward, a = pair
    wrong = native.map_points(backward, POWER)
    assert np.linalg.norm(wrong - to_native(POWER, a), axis=1).min() > 10.0


@pytest.mark.filterwarnings("ignore:Reference space not set")
def test_mapping_equals_nitransforms_whole_chain(pair) -> None:
    from nitransforms.manip import load

    forward, backward, _ = pair
    points = POWER[::7]
    for path in (forward, backward):
        chain = load(str(path), fmt="itk")
        assert np.abs(native.map_points(path, points) - chain.map(points)).max() < 1e-3


def test_mapping_is_cached_in_the_process_and_on_disk(
    pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward, _, _ = pair
    points = POWER[:20] + 0.25  # not computed by the other tests
    first = native.map_points(forward, points, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def fail(*args: object) -> None:
        raise AssertionError("recomputed")

    monkeypatch.setattr(native, "_map_uncached", fail)
    np.testing.assert_array_equal(native.map_points(forward, points, cache_dir=tmp_path), first)
    native._MEMORY.clear()  # another worker: reads the disk cache
    np.testing.assert_array_equal(native.map_points(forward, points, cache_dir=tmp_path), first)
    native._MEMORY.clear()
    with pytest.raises(AssertionError, match="recomputed"):  # other points: not cached
        native.map_points(forward, points + 1, cache_dir=tmp_path)


def test_unreadable_and_missing_transforms_are_one_line_errors(tmp_path: Path) -> None:
    fake = tmp_path / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
    fake.write_bytes(b"\x89HDF\r\n\x1a\nnot really\n")
    with pytest.raises(DataError, match=r"is not an ITK composite transform") as info:
        native.map_points(fake, POWER[:3])
    assert str(fake) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MissingInputError, match=r"cannot be read"):
        native.map_points(tmp_path / "absent_xfm.h5", POWER[:3])


@pytest.mark.parametrize(
    ("seed_space", "run_space", "expected"),
    [
        ("MNI152", "T1w", ()),
        ("MNI", "T1w:res-native", ()),
        ("MNI152NLin6Asym", "T1w", ("MNI152NLin6Asym",)),
        ("MNIPediatricAsym:cohort-1", "T1w", ("MNIPediatricAsym",)),
        ("T1w", "T1w", None),
        (None, "T1w", None),
        ("MNI152", "MNI152NLin2009cAsym", None),
        ("T2w", "T1w", None),  # a subject's own space: seeds.check_space explains
    ],
)
def test_template_candidates(seed_space, run_space, expected) -> None:
    assert native.template_candidates(seed_space, run_space) == expected


# --------------------------------------------------------------------------- finding transforms


@pytest.fixture(scope="module")
def sessions_layout(tmp_path_factory: pytest.TempPathFactory):
    """Two subjects x sessions 1, 2 with transform files (names only) where fMRIPrep puts them."""
    from bids_spheres.app.demo import build_dataset
    from bids_spheres.app.discovery import collect_runs, make_layout

    info = build_dataset(
        tmp_path_factory.mktemp("targets") / "ds", n_runs=1, sessions=["1", "2"], n_volumes=40
    )
    root = info.fmriprep_dir
    names = {
        "sub-01/anat/sub-01": ["MNI152NLin2009cAsym"],
        "sub-01/ses-2/anat/sub-01_ses-2": [
            "MNI152NLin2009cAsym",
            "MNIPediatricAsym_cohort-1",
            "MNIPediatricAsym_cohort-2",
        ],
        "sub-02/ses-2/anat/sub-02_ses-2": ["MNI152NLin2009cAsym", "MNI152NLin6Asym"],
    }
    for prefix, templates in names.items():
        (root / prefix).parent.mkdir(parents=True, exist_ok=True)
        for template in templates:
            for name in (f"from-T1w_to-{template}", f"from-{template}_to-T1w"):
                (root / f"{prefix}_{name}_mode-image_xfm.h5").write_bytes(b"")
    layout = make_layout(root, None)
    return root, layout, collect_runs(layout, space="T1w")


def _seeds_in(tmp_path: Path, space: str) -> str:
    tsv = tmp_path / "s.tsv"
    tsv.write_text("name\tx\ty\tz\nA\t0\t-52\t26\n")
    tsv.with_suffix(".json").write_text(f'{{"Space": "{space}"}}')
    return str(tsv)


def _chosen(targets: dict, root: Path) -> dict[str, str]:
    out = {}
    for bold, target in sorted(targets.items()):
        label = Path(bold).name.split("_task")[0]
        out[label] = (
            target.transform.relative_to(root).as_posix() if target.transform else target.problem
        )
    return out


def test_each_run_takes_its_session_then_the_subject_then_the_only_session_transform(
    sessions_layout, tmp_path: Path
) -> None:
    root, layout, runs = sessions_layout
    targets = native.find_targets(layout, runs, _seeds_in(tmp_path, "MNI152"), "T1w")
    assert {t.template for t in targets.values()} == {"MNI152NLin2009cAsym"}
    assert _chosen(targets, root) == {
        "sub-01_ses-1": "sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
        "sub-01_ses-2": (
            "sub-01/ses-2/anat/sub-01_ses-2_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
        ),
        "sub-02_ses-1": (
            "sub-02/ses-2/anat/sub-02_ses-2_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
        ),
        "sub-02_ses-2": (
            "sub-02/ses-2/anat/sub-02_ses-2_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
        ),
    }


def test_a_template_some_subjects_lack_fails_only_their_runs(sessions_layout, tmp_path) -> None:
    root, layout, runs = sessions_layout
    chosen = _chosen(
        native.find_targets(layout, runs, _seeds_in(tmp_path, "MNI152NLin6Asym"), "T1w"), root
    )
    assert chosen["sub-02_ses-1"].endswith(
        "sub-02_ses-2_from-T1w_to-MNI152NLin6Asym_mode-image_xfm.h5"
    )
    for label in ("sub-01_ses-1", "sub-01_ses-2"):
        assert chosen[label].startswith(
            "no from-T1w_to-MNI152NLin6Asym_mode-image_xfm.h5 transform"
        )
        assert f"sub-01/anat or sub-01/ses-{label[-1]}/anat" in chosen[label]


def test_cohorts_are_told_apart(sessions_layout, tmp_path: Path) -> None:
    root, layout, runs = sessions_layout
    ses2 = [r for r in runs if (r.entities["subject"], r.entities["session"]) == ("01", "2")]
    seeds_tsv = _seeds_in(tmp_path, "MNIPediatricAsym:cohort-2")
    [chosen] = _chosen(native.find_targets(layout, ses2, seeds_tsv, "T1w"), root).values()
    assert chosen.endswith("_to-MNIPediatricAsym_cohort-2_mode-image_xfm.h5")
    seeds_tsv = _seeds_in(tmp_path, "MNIPediatricAsym")
    [chosen] = _chosen(native.find_targets(layout, ses2, seeds_tsv, "T1w"), root).values()
    assert "several cohorts (cohort-1, cohort-2)" in chosen


def test_no_mapping_without_a_native_space_or_with_native_seeds(sessions_layout, tmp_path) -> None:
    _, layout, runs = sessions_layout
    assert (
        native.find_targets(layout, runs, _seeds_in(tmp_path, "MNI152"), "MNI152NLin2009cAsym")
        == {}
    )
    assert native.find_targets(layout, runs, _seeds_in(tmp_path, "T1w"), "T1w") == {}
    with pytest.raises(DataError, match=r"no selected subject .* from-T1w_to-MNI152Lin_mode"):
        native.find_targets(layout, runs, _seeds_in(tmp_path, "MNI152Lin"), "T1w")
