"""Tests for bids_spheres.app.seeds: built-in sets, TSV validation, space and FOV checks."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bids_spheres.app import seeds
from bids_spheres.errors import DataError, MissingInputError, UsageError

BUILTIN = ["dosenbach2010", "power2011", "seitzman2018"]
HEADER = "name\tx\ty\tz\n"


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a network connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def write(tmp_path: Path, text: str, name: str = "seeds.tsv", sidecar: object = None) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    if sidecar is not None:
        side = path.with_suffix(".json")
        side.write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    return path


def data_error(tmp_path: Path, text: str, **kwargs) -> str:
    path = write(tmp_path, text, **kwargs)
    with pytest.raises(DataError) as info:
        seeds.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert info.value.exit_code == 65
    return message


def make_set(space: str | None, coords=((0.0, 0.0, 0.0),), names=None) -> seeds.SeedSet:
    coords = np.asarray(coords, dtype=float)
    names = names or tuple(f"s{i}" for i in range(len(coords)))
    return seeds.SeedSet(
        name="test",
        names=tuple(names),
        coords_mm=coords,
        radii_mm=np.full(len(coords), np.nan),
        networks=(None,) * len(coords),
        space=space,
        source=Path("/data/test.tsv"),
    )


# ----------------------------------------------------------------- built-in sets


def test_list_builtin():
    assert seeds.list_builtin() == BUILTIN


@pytest.mark.parametrize(
    ("spec", "count"),
    [("power2011", 264), ("POWER2011", 264), ("Dosenbach2010", 160), (" seitzman2018 ", 300)],
)
def test_builtin_counts(spec, count):
    s = seeds.load(spec)
    assert len(s) == count
    assert s.coords_mm.shape == (count, 3)
    assert s.radii_mm.shape == (count,)
    assert len(s.networks) == count
    assert len(set(s.names)) == count
    assert s.name == spec.strip().lower()
    assert s.label == spec.strip().lower()
    assert s.space == "MNI152"
    assert s.source.name == f"{s.name}.tsv" and s.source.is_file()


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_sidecar(name):
    s = seeds.load(name)
    meta = json.loads(s.source.with_suffix(".json").read_text())
    assert meta["NumberOfSeeds"] == len(s)
    assert meta["Space"] == s.space
    assert meta["DOI"] in s.citation and s.citation == meta["Citation"]
    assert "nilearn" in meta["CoordinatesSource"]
    assert sum(meta["NetworkCounts"].values()) == len(s)


def test_power_matches_nilearn(no_network):
    from nilearn.datasets import fetch_coords_power_2011

    rois = fetch_coords_power_2011()["rois"]
    s = seeds.load("power2011")
    np.testing.assert_array_equal(s.coords_mm, rois[["x", "y", "z"]].to_numpy(dtype=float))
    assert s.names == tuple(f"power{r:03d}" for r in rois["roi"])
    assert np.isnan(s.radii_mm).all()


def test_power_networks_are_the_published_consensus():
    s = seeds.load("power2011")
    counts: dict[str, int] = {}
    for net in s.networks:
        counts[net] = counts.get(net, 0) + 1
    # Power et al. (2011) consensus: 13 systems plus 28 uncertain ROIs.
    assert counts == {
        "Auditory": 13,
        "Cerebellar": 4,
        "Cingulo-opercular Task Control": 14,
        "Default mode": 58,
        "Dorsal attention": 11,
        "Fronto-parietal Task Control": 25,
        "Memory retrieval?": 5,
        "Salience": 18,
        "Sensory/somatomotor Hand": 30,
        "Sensory/somatomotor Mouth": 5,
        "Subcortical": 13,
        "Uncertain": 28,
        "Ventral attention": 9,
        "Visual": 31,
    }
    by_name = dict(zip(s.names, s.networks, strict=True))
    assert by_name["power001"] == "Uncertain"
    assert by_name["power138"] == "Ventral attention"
    assert by_name["power221"] == "Memory retrieval?"
    assert by_name["power255"] == "Sensory/somatomotor Hand"
    assert by_name["power264"] == "Dorsal attention"


def test_dosenbach_matches_nilearn(no_network):
    from nilearn.datasets import fetch_coords_dosenbach_2010

    bunch = fetch_coords_dosenbach_2010(ordered_regions=False)
    s = seeds.load("dosenbach2010")
    np.testing.assert_array_equal(s.coords_mm, bunch["rois"].to_numpy(dtype=float))
    assert list(s.networks) == list(bunch["networks"])
    assert s.names[0] == "dosenbach001_vmPFC"
    assert s.names[8] == "dosenbach009_vent_aPFC"
    expected = [f"dosenbach{i:03d}_" for i in range(1, 161)]
    assert all(n.startswith(p) for n, p in zip(s.names, expected, strict=True))
    assert np.isnan(s.radii_mm).all()


def test_seitzman_matches_nilearn(no_network):
    from nilearn.datasets import fetch_coords_seitzman_2018

    bunch = fetch_coords_seitzman_2018(ordered_regions=False)
    s = seeds.load("seitzman2018")
    np.testing.assert_array_equal(s.coords_mm, bunch["rois"].to_numpy(dtype=float))
    np.testing.assert_array_equal(s.radii_mm, np.asarray(bunch["radius"], dtype=float))
    assert list(s.networks) == list(bunch["networks"])
    assert np.count_nonzero(s.radii_mm == 5) == 239
    assert np.count_nonzero(s.radii_mm == 4) == 61
    # per-seed radii win over the default
    np.testing.assert_array_equal(s.resolve_radii(8.0), s.radii_mm)
    assert s.names[0] == "seitzman001" and s.names[-1] == "seitzman300"


# ----------------------------------------------------------------- reading a TSV


def test_load_custom_tsv(tmp_path):
    text = (
        "\ufeffName\tZ\tY\tX\tradius\tnetwork\tcomment\r\n"
        "PCC\t30\t-52\t0\t\tDMN\tposterior\r\n"
        "\r\n"
        "mPFC\t-5\t50\t0.5\tn/a\t\tx\r\n"
        "L-IPS\t4.5e1\t-6.25E1\t-30\t6\tn/a\t\r\n"
    )
    path = write(
        tmp_path, text, name="my-seeds_v2.tsv", sidecar={"Space": "T1w", "Reference": "X"}
    )
    s = seeds.load(path)
    assert s.names == ("PCC", "mPFC", "L-IPS")
    np.testing.assert_array_equal(s.coords_mm, [[0, -52, 30], [0.5, 50, -5], [-30, -62.5, 45]])
    np.testing.assert_array_equal(s.radii_mm, [np.nan, np.nan, 6.0])
    assert s.networks == ("DMN", None, None)
    assert s.space == "T1w"
    assert s.citation == "X"
    assert s.name == "my-seeds_v2"
    assert s.label == "myseedsv2"
    assert s.source == path
    assert s.coords_mm.dtype == np.float64 and s.radii_mm.dtype == np.float64


def test_load_without_sidecar_or_optional_columns(tmp_path):
    s = seeds.load(write(tmp_path, HEADER + "a\t1\t2\t3\n", name="___.tsv"))
    assert s.space is None and s.citation is None
    assert s.networks == (None,)
    assert np.isnan(s.radii_mm).all()
    assert s.label == "custom"


def test_citation_preferred_over_reference(tmp_path):
    path = write(tmp_path, HEADER + "a\t1\t2\t3\n", sidecar={"Citation": "C", "Reference": "R"})
    assert seeds.load(path).citation == "C"


def test_load_accepts_pathlike_and_does_not_treat_it_as_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInputError):
        seeds.load(Path("power2011"))


def test_default_radius_fills_only_missing(tmp_path):
    path = write(tmp_path, "name\tx\ty\tz\tradius\na\t0\t0\t0\t\nb\t1\t1\t1\t2\n")
    np.testing.assert_array_equal(seeds.load(path, default_radius=5).radii_mm, [5.0, 2.0])
    np.testing.assert_array_equal(seeds.load(path).radii_mm, [np.nan, 2.0])


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "abc"])
def test_default_radius_invalid(tmp_path, bad):
    path = write(tmp_path, HEADER + "a\t1\t2\t3\n")
    with pytest.raises(UsageError, match="default radius") as info:
        seeds.load(path, default_radius=bad)
    assert info.value.exit_code == 64


def test_resolve_radii():
    s = dataclasses.replace(make_set(None, coords=[[0, 0, 0]] * 3), radii_mm=[np.nan, 3.0, 0.0])
    np.testing.assert_array_equal(s.resolve_radii(None), [0.0, 3.0, 0.0])
    np.testing.assert_array_equal(s.resolve_radii(6), [6.0, 3.0, 0.0])
    assert np.isnan(s.radii_mm[0])  # the set itself is unchanged
    with pytest.raises(UsageError, match=r"default radius -2 is invalid"):
        s.resolve_radii(-2)


def test_to_dataframe(tmp_path):
    path = write(tmp_path, "name\tx\ty\tz\tradius\tnetwork\na\t1\t2\t3\t4\tN\nb\t5\t6\t7\t\t\n")
    df = seeds.load(path).to_dataframe()
    assert list(df.columns) == ["name", "x", "y", "z", "radius", "network"]
    assert df["name"].tolist() == ["a", "b"]
    np.testing.assert_array_equal(df[["x", "y", "z"]].to_numpy(), [[1, 2, 3], [5, 6, 7]])
    assert df["radius"].iloc[0] == 4.0 and np.isnan(df["radius"].iloc[1])
    assert df["network"].iloc[0] == "N" and df["network"].iloc[1] is None


def test_seedset_is_immutable():
    s = seeds.load("power2011")
    with pytest.raises(ValueError, match="read-only"):
        s.coords_mm[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        s.radii_mm[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.space = "T1w"
    assert "n_seeds=264" in repr(s)


def test_seedset_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        dataclasses.replace(make_set(None, coords=[[0, 0, 0]] * 2), coords_mm=np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"got 1 networks for 2 seeds"):
        dataclasses.replace(make_set(None, coords=[[0, 0, 0]] * 2), networks=(None,))


names = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_-"),
    min_size=1,
    max_size=12,
)
# coordinates within seeds.MAX_COORDINATE_MM (beyond it: tests/app/test_hostile_values.py)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e3, max_value=1e3)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(names, finite, finite, finite, st.none() | st.floats(0, 50)),
        min_size=1,
        max_size=8,
        unique_by=lambda r: r[0],
    )
)
def test_roundtrip(tmp_path_factory, rows):
    text = "name\tx\ty\tz\tradius\n" + "".join(
        f"{n}\t{x!r}\t{y!r}\t{z!r}\t{'' if r is None else repr(r)}\n" for n, x, y, z, r in rows
    )
    s = seeds.load(write(tmp_path_factory.mktemp("rt"), text))
    assert s.names == tuple(r[0] for r in rows)
    np.testing.assert_array_equal(s.coords_mm, [r[1:4] for r in rows])
    np.testing.assert_array_equal(s.radii_mm, [np.nan if r[4] is None else r[4] for r in rows])


# ----------------------------------------------------------------- validation errors


def test_missing_file_lists_builtins(tmp_path):
    missing = tmp_path / "nope.tsv"
    with pytest.raises(MissingInputError) as info:
        seeds.load(missing)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "dosenbach2010, power2011, seitzman2018" in message
    assert info.value.exit_code == 66 and "\n" not in message


def test_unknown_builtin_name_is_a_missing_file():
    with pytest.raises(MissingInputError, match=r"'power2012' does not exist.*power2011"):
        seeds.load("power2012")


def test_directory_is_not_a_seeds_file(tmp_path):
    with pytest.raises(MissingInputError, match="is not a file"):
        seeds.load(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    assert "is empty" in data_error(tmp_path, text)


def test_header_without_seeds(tmp_path):
    assert "has a header but no seeds" in data_error(tmp_path, HEADER + "\n")


def test_missing_columns_lists_present(tmp_path):
    message = data_error(tmp_path, "label\tx\tyy\tz\na\t1\t2\t3\n")
    assert "lacks the column(s) name, y" in message
    assert "'label', 'x', 'yy', 'z'" in message
    assert "line 1" in message


def test_comma_separated_hint(tmp_path):
    message = data_error(tmp_path, "name,x,y,z\na,1,2,3\n")
    assert "comma-separated; use tabs" in message


def test_duplicate_column(tmp_path):
    message = data_error(tmp_path, "name\tx\ty\tz\tX\na\t1\t2\t3\t4\n")
    assert "column 'x' twice" in message


def test_wrong_field_count(tmp_path):
    message = data_error(tmp_path, HEADER + "a\t1\t2\t3\nb\t1\t2\n")
    assert "line 3 has 3 tab-separated fields but the header has 4" in message


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("abc", "is not a number"),
        ("", "is not a number"),
        ("n/a", "is not a number"),
        ("1_0", "is not a number"),
        ("NaN", "is not finite"),
        ("nan", "is not finite"),
        ("inf", "is not finite"),
        ("-Infinity", "is not finite"),
    ],
)
def test_bad_coordinate(tmp_path, value, kind):
    message = data_error(tmp_path, HEADER + "a\t1\t2\t3\n" + f"b\t1\t{value}\t3\n")
    assert f"line 3 has y = {value!r}, which {kind}" in message
    assert "decimal number" in message


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("-1", "is negative"),
        ("nan", "is not finite"),
        ("inf", "is not finite"),
        ("big", "is not a number"),
    ],
)
def test_bad_radius(tmp_path, value, kind):
    message = data_error(tmp_path, f"name\tx\ty\tz\tradius\na\t1\t2\t3\t{value}\n")
    assert f"line 2 has radius = {value!r}, which {kind}" in message
    assert "leave it empty" in message


def test_duplicate_names(tmp_path):
    message = data_error(tmp_path, HEADER + "a\t1\t2\t3\nb\t1\t2\t3\n\na\t4\t5\t6\n")
    assert "line 5 repeats the seed name 'a' of line 2" in message


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("n/a", "is empty or n/a"),
        (" ", "is empty or n/a"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("x..y", "'..'"),
        (".", "'..' or is '.'"),
        (" lead", "leading or trailing spaces"),
        ("trail ", "leading or trailing spaces"),
        ("a\rb", "control character"),
        ("a\x00b", "control character"),
        ("a\x1bb", "control character"),
        ("a\x7fb", "control character"),
    ],
)
def test_unsafe_names(tmp_path, name, problem):
    message = data_error(tmp_path, HEADER + f"{name}\t1\t2\t3\n")
    assert f"line 2 has the seed name {name!r}, which " in message
    assert problem in message


def test_empty_name(tmp_path):
    message = data_error(tmp_path, HEADER + "\t1\t2\t3\n")
    assert "line 2 has the seed name '', which is empty" in message


def test_name_with_tab_or_newline_cannot_hide(tmp_path):
    message = data_error(tmp_path, HEADER + "my\tseed\t1\t2\t3\n")
    assert "line 2 has 5 tab-separated fields" in message and "cannot contain tabs" in message
    message = data_error(tmp_path, HEADER + "my\nseed\t1\t2\t3\n")
    assert "line 2 has 1 tab-separated fields" in message


def test_network_with_control_character(tmp_path):
    message = data_error(tmp_path, "name\tx\ty\tz\tnetwork\na\t1\t2\t3\tD\rMN\n")
    assert "network 'D\\rMN'" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "seeds.tsv"
    path.write_bytes(b"name\tx\ty\tz\n\xff\t1\t2\t3\n")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(line 2, byte 11\)"):
        seeds.load(path)


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        ("{not json", "is not valid JSON (line 1"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ({"Space": 3}, "has Space = 3"),
        ({"Space": ""}, "has Space = ''"),
        ({"Citation": ["a"]}, "Citation that is a list"),
    ],
)
def test_bad_sidecar(tmp_path, sidecar, expected):
    path = write(tmp_path, HEADER + "a\t1\t2\t3\n", sidecar=sidecar)
    with pytest.raises(DataError) as info:
        seeds.load(path)
    message = str(info.value)
    assert expected in message and str(path.with_suffix(".json")) in message
    assert "\n" not in message


# ----------------------------------------------------------------- check_space


@pytest.mark.parametrize(
    ("seed_space", "run_space"),
    [
        (None, "T1w"),
        (None, "MNI152NLin2009cAsym"),
        ("MNI152", "MNI152NLin2009cAsym"),
        ("MNI152", "MNI152NLin6Asym"),
        ("MNI152", "MNI152NLin2009cSym"),
        ("MNI152", "MNI152NLin2009cAsym:res-2"),
        ("MNI", "MNI152NLin6Asym"),
        ("mni152", "MNI152NLin6Asym"),
        ("MNI152NLin6Asym", "MNI152NLin6Asym"),
        ("T1w", "T1w"),
    ],
)
def test_check_space_accepts(seed_space, run_space):
    expected = 1 if seed_space is None and run_space == "T1w" else 0
    assert len(seeds.check_space(make_set(seed_space), run_space)) == expected


@pytest.mark.parametrize("run_space", ["T1w", "T2w", "func", "boldref", "anat"])
def test_check_space_mni_seeds_on_native_run(run_space):
    with pytest.raises(DataError) as info:
        seeds.check_space(make_set("MNI152"), run_space)
    message = str(info.value)
    assert f"cannot be used on a run in space {run_space!r}, a subject's own space" in message
    assert "run with --space MNI152NLin2009cAsym" in message
    assert f"give seeds in {run_space} coordinates with a sidecar declaring Space" in message
    assert "/data/test.tsv" in message and "\n" not in message


@pytest.mark.parametrize("run_space", ["fsnative", "fsaverage5", "fsLR"])
def test_check_space_surface_run(run_space):
    with pytest.raises(DataError, match=r"a surface space.*--space MNI152NLin2009cAsym"):
        seeds.check_space(make_set("MNI"), run_space)


@pytest.mark.parametrize(
    ("seed_space", "run_space", "expected"),
    [
        (
            "MNI152",
            "MNI305",
            "'MNI305', not an MNI152 space; run with --space MNI152NLin2009cAsym",
        ),
        ("MNI152", "MNIPediatricAsym", "not an MNI152 space"),
        (
            "MNI152NLin6Asym",
            "MNI152NLin2009cAsym",
            "not 'MNI152NLin6Asym'; run with --space MNI152NLin6Asym",
        ),
        ("MNI152NLin6Asym", "T1w", "a subject's own space"),
        ("T1w", "MNI152NLin2009cAsym", "not 'T1w'; run with --space T1w"),
        ("T1w", "boldref", "not 'T1w'; run with --space T1w"),
    ],
)
def test_check_space_rejects(seed_space, run_space, expected):
    with pytest.raises(DataError) as info:
        seeds.check_space(make_set(seed_space), run_space)
    assert expected in str(info.value)


# ----------------------------------------------------------------- check_field_of_view

AFFINE = np.array([[2.0, 0, 0, -10], [0, 2, 0, -10], [0, 0, 2, -10], [0, 0, 0, 1]])
SHAPE = (10, 10, 10)  # voxel centres from -10 to 8 mm on each axis


def test_fov_inside_including_rounding_edges():
    # -10.8 mm -> voxel -0.4 -> rint 0 (inside); 8.8 mm -> voxel 9.4 -> 9 (inside)
    s = make_set(None, coords=[[0, 0, 0], [-10.8, 8.8, -10], [8.8, -10.8, 8]])
    assert seeds.check_field_of_view(s, AFFINE, SHAPE, "bold.nii.gz") is None


def test_fov_lists_every_seed_outside():
    coords = [[0, 0, 0], [-11.2, 0, 0], [0, 9.2, 0], [2, 2, 2], [100, -100, 50.5]]
    s = make_set(None, coords=coords, names=("in1", "xlow", "yhigh", "in2", "far"))
    with pytest.raises(DataError) as info:
        seeds.check_field_of_view(s, AFFINE, (*SHAPE, 50), "sub-01_bold.nii.gz")
    message = str(info.value)
    assert message.startswith("3 of 5 seeds lie outside the field of view of 'sub-01_bold.nii.gz'")
    assert "(grid 10x10x10)" in message
    assert "seed 2 'xlow' (-11.2, 0, 0)" in message
    assert "seed 3 'yhigh' (0, 9.2, 0)" in message
    assert "seed 5 'far' (100, -100, 50.5)" in message
    assert "in1" not in message and "in2" not in message
    assert "/data/test.tsv" in message and "\n" not in message


def test_fov_with_oblique_flipped_affine():
    affine = np.array([[-3.0, 0, 0, 90], [0, 0, 3, -120], [0, 3, 0, -80], [0, 0, 0, 1]])
    inside = make_set(None, coords=[[90, -120, -80], [90 - 3 * 29, -120 + 3 * 39, -80 + 3 * 19]])
    seeds.check_field_of_view(inside, affine, (30, 20, 40), "x.nii")
    outside = make_set(None, coords=[[93, -120, -80]])
    with pytest.raises(DataError, match=r"seed 1 's0' \(93, -120, -80\)"):
        seeds.check_field_of_view(outside, affine, (30, 20, 40), "x.nii")


def test_fov_builtin_sets_fit_a_2mm_mni_grid():
    # MNI152NLin2009cAsym res-2 grid (97 x 115 x 97), as fMRIPrep writes it.
    affine = np.array([[2.0, 0, 0, -96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]])
    for name in BUILTIN:
        seeds.check_field_of_view(seeds.load(name), affine, (97, 115, 97), "mni.nii.gz")


def test_fov_singular_affine():
    with pytest.raises(DataError, match=r"'bad\.nii' has a singular affine"):
        seeds.check_field_of_view(make_set(None), np.zeros((4, 4)), SHAPE, "bad.nii")
