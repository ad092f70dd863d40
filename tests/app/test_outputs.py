"""bids_spheres.app.outputs: names in schema order, atomic writes, run completeness, root files."""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bids_spheres.app import outputs
from bids_spheres.app.outputs import (
    BIDSIGNORE_PATTERNS,
    ENTITY_ORDER,
    LOCK_NAME,
    RunPaths,
    atomic_write_bytes,
    atomic_write_text,
    bids_uri,
    derivative_filename,
    is_complete,
    params_hash,
    run_paths,
    seed_table_paths,
    to_label,
    write_bidsignore,
    write_dataset_description,
    write_json,
    write_run,
    write_seed_table,
    write_tsv,
)
from bids_spheres.errors import DataError, OutputError

NON_SCHEMA_ENTITIES = {"meas", "seed", "stat"}
BOLD = {
    "subject": "01",
    "task": "rest",
    "space": "MNI152NLin2009cAsym",
    "desc": "preproc",
    "suffix": "bold",
    "extension": ".nii.gz",
    "datatype": "func",
}


def _leftover_temps(directory: Path) -> list[Path]:
    return [
        p
        for p in directory.rglob("*")
        if re.fullmatch(r"\..+\.tmp-[A-Za-z0-9]+-\d+-[0-9a-f]{8}", p.name)
    ]


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


# ------------------------------------------------------------------- schema


def test_entity_order_is_the_schema_order() -> None:
    from bidsschematools import schema as bids_schema  # pybids' dependency

    schema = bids_schema.load_schema()
    entities = schema.objects.entities
    schema_order = [entities[name].name for name in schema.rules.entities]
    assert [key for key in ENTITY_ORDER if key not in NON_SCHEMA_ENTITIES] == schema_order
    assert ENTITY_ORDER[-4:] == ("meas", "seed", "stat", "desc")
    # every schema long name maps to its short key
    for long_name in schema.rules.entities:
        assert outputs._LONG_TO_SHORT[long_name] == entities[long_name].name
    # label/index formats and which entities are indices
    assert outputs._LABEL_RE.pattern == schema.objects.formats.label.pattern
    assert outputs._INDEX_RE.pattern == schema.objects.formats.index.pattern
    index = {entities[n].name for n in schema.rules.entities if entities[n].format == "index"}
    assert index == outputs._INDEX_ENTITIES


def test_pybids_long_names_are_understood() -> None:
    import bids

    config = Path(bids.__file__).parent / "layout" / "config"
    not_filename_entities = {"suffix", "scans", "fmap", "datatype", "extension"}
    unsupported = {"from", "to", "mode", "model", "subset", "roi"}  # not BIDS schema entities
    for name in ("bids.json", "derivatives.json"):
        for entity in json.loads((config / name).read_text())["entities"]:
            key = entity["name"]
            if key in not_filename_entities | unsupported:
                continue
            assert key in outputs._LONG_TO_SHORT, key
            # the short key is the one pybids' own pattern matches in file names
            short = outputs._LONG_TO_SHORT[key]
            assert f"{short}-" in entity["pattern"], (key, entity["pattern"])


# -------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("entities", "stem"),
    [
        (
            {"subject": "01", "task": "rest", "space": "MNI152NLin2009cAsym"},
            "sub-01_task-rest_space-MNI152NLin2009cAsym",
        ),
        (
            {"run": "2", "space": "T1w", "task": "rest", "session": "pre", "subject": "A1"},
            "sub-A1_ses-pre_task-rest_run-2_space-T1w",
        ),
        (
            {
                "subject": "01",
                "session": "1",
                "task": "nback",
                "acquisition": "mb4",
                "run": "01",
                "space": "MNI152NLin6Asym",
                "res": "2",
            },
            "sub-01_ses-1_task-nback_acq-mb4_run-01_space-MNI152NLin6Asym_atlas-A_res-2",
        ),
        (
            {
                "res": "native",
                "echo": 2,
                "part": "mag",
                "direction": "PA",
                "reconstruction": "moco",
                "ceagent": "gad",
                "acquisition": "hi",
                "task": "rest",
                "subject": "01",
                "space": "MNI152NLin2009cAsym",
                "run": 3,
            },
            "sub-01_task-rest_acq-hi_ce-gad_rec-moco_dir-PA_run-3_echo-2_part-mag"
            "_space-MNI152NLin2009cAsym_atlas-A_res-native",
        ),
        (
            {"sub": "02", "ses": "b", "task": "x", "acq": "y", "space": "fsLR", "den": "91k"},
            "sub-02_ses-b_task-x_acq-y_space-fsLR_atlas-A_den-91k",
        ),
        (
            {"subject": "01", "session": None, "task": "rest", "space": "T1w", "echo": None},
            "sub-01_task-rest_space-T1w",
        ),
    ],
)
def test_run_paths_names_and_directories(tmp_path: Path, entities: dict, stem: str) -> None:
    paths = run_paths(
        tmp_path, {**entities, "desc": "preproc", "suffix": "bold"}, atlas="A", desc="D"
    )
    if "_atlas-A" not in stem:
        stem += "_atlas-A"
    session = entities.get("session") or entities.get("ses")
    subject = entities.get("subject") or entities.get("sub")
    expected_dir = tmp_path / f"sub-{subject}" / (f"ses-{session}" if session else "") / "func"
    assert paths.directory == Path(os.path.normpath(expected_dir))
    assert paths.timeseries_tsv.name == f"{stem}_desc-D_timeseries.tsv"
    assert paths.timeseries_json.name == f"{stem}_desc-D_timeseries.json"
    assert paths.relmat_tsv.name == f"{stem}_meas-PearsonCorrelation_desc-D_relmat.tsv"
    assert paths.relmat_json.name == f"{stem}_meas-PearsonCorrelation_desc-D_relmat.json"


def test_run_paths_sanitises_atlas_and_desc_and_drops_source_desc(tmp_path: Path) -> None:
    paths = run_paths(tmp_path, BOLD, atlas="power_2011", desc="simple+gsr")
    assert paths.timeseries_tsv.name == (
        "sub-01_task-rest_space-MNI152NLin2009cAsym_atlas-power2011_desc-simpleGsr_timeseries.tsv"
    )
    assert "preproc" not in str(paths.timeseries_tsv)


def test_pybids_padded_run_keeps_its_padding(tmp_path: Path) -> None:
    from bids.layout.utils import PaddedInt as padded_int

    paths = run_paths(tmp_path, {**BOLD, "run": padded_int("002")}, atlas="A", desc="D")
    assert "_run-002_" in paths.timeseries_tsv.name


def test_derivative_filename_order_extra_and_ignored_keys() -> None:
    name = derivative_filename(
        {"desc": "old", "hemisphere": "L", "subject": "1", "extension": ".x", "datatype": "anat"},
        suffix="seeds",
        extension=".tsv.gz",
        desc="new",
        atlas="S",
    )
    assert name == "sub-1_hemi-L_atlas-S_desc-new_seeds.tsv.gz"
    assert (
        derivative_filename({}, suffix="seeds", extension=".tsv", atlas="X") == "atlas-X_seeds.tsv"
    )


@pytest.mark.parametrize(
    ("entities", "match"),
    [
        ({"subject": "../etc"}, "escape"),
        ({"subject": "a/b"}, "escape"),
        ({"task": "a\\b"}, "escape"),
        ({"task": "a..b"}, "escape"),
        ({"task": "rest-state"}, "not a BIDS label"),
        ({"task": "rest_state"}, "not a BIDS label"),
        ({"task": "rest state"}, "not a BIDS label"),
        ({"task": ""}, "not a BIDS label"),
        ({"run": "1a"}, "not a BIDS index"),
        ({"echo": -1}, "not a BIDS index"),
        ({"run": True}, "boolean"),
        ({"foo": "bar"}, "unknown BIDS entity 'foo'"),
    ],
)
def test_invalid_entities_raise_dataerror(entities: dict, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        derivative_filename({"subject": "01", **entities}, suffix="bold", extension=".tsv")
    assert "\n" not in str(info.value)


def test_label_with_plus_is_a_valid_schema_label() -> None:
    name = derivative_filename({"subject": "01", "acq": "6p+s2"}, suffix="bold", extension=".tsv")
    assert name == "sub-01_acq-6p+s2_bold.tsv"


def test_conflicting_spellings_and_bad_suffix_or_extension() -> None:
    with pytest.raises(ValueError, match="given twice"):
        derivative_filename({"session": "1", "ses": "2"}, suffix="bold", extension=".tsv")
    derivative_filename({"session": "1", "ses": "1"}, suffix="bold", extension=".tsv")
    with pytest.raises(ValueError, match="suffix"):
        derivative_filename({}, suffix="time_series", extension=".tsv")
    with pytest.raises(ValueError, match="extension"):
        derivative_filename({}, suffix="bold", extension="tsv")


@pytest.mark.parametrize(("missing", "short"), [("subject", "sub"), ("task", "task")])
def test_run_paths_needs_subject_and_task(tmp_path: Path, missing: str, short: str) -> None:
    entities = {k: v for k, v in BOLD.items() if k != missing}
    with pytest.raises(DataError, match=f"has no '{short}' entity"):
        run_paths(tmp_path, entities, atlas="A", desc="D")


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("simple+gsr", "simpleGsr"),
        ("power_2011", "power2011"),
        ("Dosenbach 160", "Dosenbach160"),
        ("scrubbing.5", "scrubbing5"),
        ("aCompCor-50_gsr", "aCompCor50Gsr"),
        ("  spaced  out ", "spacedOut"),
        ("DMN", "DMN"),
        ("x\u00e9y", "xY"),
    ],
)
def test_to_label(raw: str, label: str) -> None:
    assert to_label(raw) == label
    assert to_label(label) == label  # idempotent
    assert re.fullmatch(r"[A-Za-z0-9]+", label)


@pytest.mark.parametrize("raw", ["../seeds", "a/b", "a\\b", "a..b", "", "+-_ "])
def test_to_label_refuses(raw: str) -> None:
    with pytest.raises(DataError):
        to_label(raw)


def test_bids_uri() -> None:
    assert bids_uri("preprocessed", "sub-01/func/x_bold.nii.gz") == (
        "bids:preprocessed:sub-01/func/x_bold.nii.gz"
    )
    assert bids_uri("", Path("sub-01") / "anat" / "x.nii") == "bids::sub-01/anat/x.nii"
    for name, rel in [
        ("a:b", "x"),
        ("a/b", "x"),
        ("raw", "/abs/x"),
        ("raw", "../x"),
        ("raw", "a\\b"),
        ("raw", ""),
    ]:
        with pytest.raises(DataError):
            bids_uri(name, rel)


# ------------------------------------------------------------ atomic writes


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "f.txt"
    atomic_write_text(target, "one\n")
    atomic_write_bytes(target, b"two\n")
    assert target.read_bytes() == b"two\n"
    assert _leftover_temps(tmp_path) == []


def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def _failing_write_all(error: BaseException, seen: list[list[Path]]):
    def fake(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        seen.append(_leftover_temps(Path(os.readlink(f"/proc/self/fd/{fd}")).parent))
        raise error

    return fake


@pytest.mark.parametrize(
    ("code", "phrase"),
    [
        (errno.ENOSPC, "disk full"),
        (errno.EDQUOT, "disk full"),
        (errno.EACCES, "not writable"),
        (errno.EROFS, "read-only file system"),
        (errno.EFBIG, "file too large"),
        (errno.EIO, "check the output directory"),
    ],
)
def test_failure_mid_write_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, phrase: str
) -> None:
    target = atomic_write_text(tmp_path / "f.tsv", "old\n")
    seen: list[list[Path]] = []
    fail = _failing_write_all(OSError(code, os.strerror(code)), seen)
    monkeypatch.setattr(outputs, "_write_all", fail)
    with pytest.raises(OutputError, match=phrase) as info:
        atomic_write_text(target, "new content\n" * 100)
    message = str(info.value)
    assert str(target) in message and "\n" not in message
    assert info.value.exit_code == 73
    assert len(seen) == 1 and len(seen[0]) == 1  # the temp file existed mid-write
    assert seen[0][0].name.startswith(".f.tsv.tmp")
    assert target.read_text() == "old\n"
    assert _leftover_temps(tmp_path) == []


def test_interrupt_mid_write_removes_temp_and_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[Path]] = []
    monkeypatch.setattr(outputs, "_write_all", _failing_write_all(KeyboardInterrupt(), seen))
    with pytest.raises(KeyboardInterrupt):
        write_json(tmp_path / "x.json", {"a": 1})
    assert len(seen[0]) == 1
    assert list(tmp_path.iterdir()) == []


def test_path_under_a_file_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("I am a file")
    with pytest.raises(OutputError, match="not a directory") as info:
        atomic_write_text(blocker / "sub-01" / "x.tsv", "x")
    assert str(blocker / "sub-01") in str(info.value)
    with pytest.raises(OutputError):
        write_bidsignore(blocker)


def test_read_only_directory_is_an_output_error(tmp_path: Path) -> None:
    """A mode-555 directory, in a child process without CAP_DAC_OVERRIDE (so as root too)."""
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    code = f"""
import sys
from pathlib import Path
from bids_spheres.errors import OutputError
from bids_spheres.app.outputs import atomic_write_text, write_dataset_description
locked = Path({str(locked)!r})
try:
    (locked / "probe").touch()
    sys.exit("the child could write into a mode-555 directory")
except PermissionError:
    pass
for call in (
    lambda: atomic_write_text(locked / "x.tsv", "x"),
    lambda: write_dataset_description(locked, version="1", fmriprep_description=None,
                                      source_datasets=[], dataset_links={{}}),
):
    try:
        call()
    except OutputError as exc:
        assert "not writable" in str(exc), exc
        print("OutputError:", exc)
    else:
        sys.exit("no OutputError")
"""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # drop the capabilities that let root ignore permissions
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test permissions as root"
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.count("OutputError:") == 2
    assert not list(locked.iterdir())


def test_real_file_size_limit_is_an_output_error(tmp_path: Path) -> None:
    """A kernel error, not a mock: RLIMIT_FSIZE in a child process (works as root too)."""
    code = f"""
import resource, signal, sys
from bids_spheres.errors import OutputError
from bids_spheres.app.outputs import atomic_write_bytes
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    atomic_write_bytes({str(tmp_path / "big.tsv")!r}, b"x" * 100_000)
except OutputError as exc:
    print(exc)
    sys.exit(exc.exit_code)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 73, result.stderr
    assert "file too large" in result.stdout and str(tmp_path / "big.tsv") in result.stdout
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- JSON and TSV


def test_write_json_format(tmp_path: Path) -> None:
    obj = {
        "z": 1,
        "a": [np.float32(0.5), np.nan, float("inf"), np.int64(3), np.bool_(True)],
        "arr": np.array([[1.0, np.nan]]),
        "t": (1, 2),
        "p": Path("x/y"),
        "u": "\u00e9",
    }
    path = write_json(tmp_path / "x.json", obj)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and '\n  "z": 1,' in text and "\u00e9" in text
    assert list(json.loads(text)) == ["z", "a", "arr", "t", "p", "u"]  # insertion order
    assert json.loads(text) == {
        "z": 1,
        "a": [0.5, None, None, 3, True],
        "arr": [[1.0, None]],
        "t": [1, 2],
        "p": "x/y",
        "u": "\u00e9",
    }
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"s": {1, 2}})
    assert not (tmp_path / "bad.json").exists()


def test_tsv_na_round_trip_and_float32_precision(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((200, 3)) * [1e-4, 1.0, 1e4]).astype(np.float32)
    values[:, 1] = np.nan
    values[5, 0] = np.nan
    table = pd.DataFrame(values, columns=["PCC", "mPFC (L)", 'say "hi"'])
    table["count"] = np.arange(200)
    table["kind"] = ["a", None] * 100
    path = write_tsv(tmp_path / "t.tsv", table)
    lines = path.read_text().splitlines()
    assert lines[0] == 'PCC\tmPFC (L)\tsay "hi"\tcount\tkind'
    assert lines[1].split("\t")[1] == "n/a" and lines[2].split("\t")[4] == "n/a"
    back = _read_tsv(path)
    assert list(back.columns) == list(table.columns)
    np.testing.assert_array_equal(back.iloc[:, :3].to_numpy(np.float32), values)
    assert back["count"].tolist() == list(range(200))
    assert back["kind"].isna().sum() == 100


@pytest.mark.parametrize(
    "table",
    [
        pd.DataFrame({"a\tb": [1.0]}),
        pd.DataFrame({"a\nb": [1.0]}),
        pd.DataFrame([[1.0, 2.0]], columns=["a", "a"]),
        pd.DataFrame({"name": ["x\ty"]}),
    ],
)
def test_tsv_refuses_what_bids_tsv_cannot_hold(tmp_path: Path, table: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "t.tsv"))):
        write_tsv(tmp_path / "t.tsv", table)
    assert list(tmp_path.iterdir()) == []


# The call write_tsv makes: the reference for the tables write_run formats without pandas.
def _pandas_tsv(values: np.ndarray, names: list[str]) -> str:
    return pd.DataFrame(values, columns=names).to_csv(
        sep="\t",
        na_rep="n/a",
        float_format="%.9g",
        index=False,
        lineterminator="\n",
        quoting=csv.QUOTE_NONE,
    )


_SPECIAL = np.array(
    [
        np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 3.0, 0.1, 1e-300, -1e-300,
        1e20, -1e20, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 123456789.0,
        1234567890.0, 999999999.5, 1e16, 2.0**53, 1e-5, 0.0001, 123456.789e-12,
        np.float32(0.1), np.float32(1e-30),
    ]
)  # fmt: skip


def _random_table(seed: int, shape: tuple[int, int], dtype: type) -> np.ndarray:
    rng = np.random.default_rng(seed)
    magnitude = 10.0 ** rng.uniform(-320, 308, size=shape)
    values = rng.standard_normal(shape) * np.where(rng.random(shape) < 0.5, magnitude, 1.0)
    special = rng.random(shape) < 0.2
    values[special] = rng.choice(_SPECIAL, size=int(special.sum()))
    whole = rng.random(shape) < 0.1  # integer-valued floats, some beyond 9 digits
    values[whole] = rng.integers(-(10**12), 10**12, size=int(whole.sum()))
    if shape[1]:
        values[:, rng.integers(shape[1])] = np.nan  # a seed outside the brain
    with np.errstate(over="ignore"):
        return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("seed", range(6))
def test_matrix_tsv_is_byte_identical_to_pandas(tmp_path: Path, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(1, 60)), int(rng.integers(1, 12)))
    values = _random_table(seed, shape, dtype)
    names = ["PCC", "nan", 'say "hi"', " sp ace ", "ü-1", "n/a", *map(str, range(20))]
    names = names[: shape[1]]
    text = outputs._render_matrix_tsv(tmp_path / "t.tsv", names, values)
    assert text == _pandas_tsv(values, names)
    # Fortran-ordered input is read row by row too
    assert outputs._render_matrix_tsv(tmp_path / "t.tsv", names, values.T.copy().T) == text


@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (0, 0), (1, 1)])
def test_matrix_tsv_edge_shapes_match_pandas(tmp_path: Path, shape: tuple[int, int]) -> None:
    values = np.full(shape, -0.0)
    names = [f"s{i}" for i in range(shape[1])]
    assert outputs._render_matrix_tsv(tmp_path / "t.tsv", names, values) == _pandas_tsv(
        values, names
    )


def test_matrix_tsv_of_other_dtypes_goes_through_pandas(tmp_path: Path) -> None:
    ints = np.array([[1, 1234567890], [-3, 0]])
    assert (
        outputs._render_matrix_tsv(tmp_path / "t.tsv", ["a", "b"], ints)
        == "a\tb\n1\t1234567890\n-3\t0\n"
    )
    assert outputs._render_matrix_tsv(tmp_path / "t.tsv", ["a", "b"], ints) == _pandas_tsv(
        ints, ["a", "b"]
    )


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(
        st.sampled_from([np.float64, np.float32]),
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": True},
    )
)
def test_matrix_tsv_matches_pandas_on_any_floats(values: np.ndarray) -> None:
    names = [f"c{i}" for i in range(values.shape[1])]
    assert outputs._render_matrix_tsv(Path("t.tsv"), names, values) == _pandas_tsv(values, names)


def test_write_run_tables_are_byte_identical_to_write_tsv(tmp_path: Path) -> None:
    paths = run_paths(tmp_path / "run", BOLD, atlas="DMN", desc="simple")
    names = [f"seed{i}" for i in range(7)]
    ts = _random_table(7, (50, 7), np.float64)
    relmat = _random_table(8, (7, 7), np.float64)
    write_run(paths, ts, names, {"ParametersHash": "h"}, relmat=relmat, relmat_sidecar={})
    ref_ts = write_tsv(tmp_path / "ts.tsv", pd.DataFrame(ts, columns=names))
    ref_rel = write_tsv(tmp_path / "rel.tsv", pd.DataFrame(relmat, columns=names))
    assert paths.timeseries_tsv.read_bytes() == ref_ts.read_bytes()
    assert paths.relmat_tsv.read_bytes() == ref_rel.read_bytes()
    with pytest.raises(DataError, match="tab or newline"):
        write_run(paths, ts[:, :2], ["a\tb", "c"], {"ParametersHash": "h"})


# ----------------------------------------------------------------- one run


def test_params_hash_is_canonical() -> None:
    base = {"strategy": "simple", "radius": 5.0, "seeds": ["a", "b"], "t_r": None}
    h = params_hash(base)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert params_hash(dict(reversed(list(base.items())))) == h
    assert params_hash({**base, "seeds": ("a", "b")}) == h
    assert params_hash({**base, "radius": np.float64(5.0)}) == h
    assert params_hash({**base, "radius": 6.0}) != h
    assert params_hash({**base, "seeds": ["b", "a"]}) != h
    assert params_hash({"x": {"b": 1, "a": 2}}) == params_hash({"x": {"a": 2, "b": 1}})
    assert params_hash({"x": float("nan")}) == params_hash({"x": None})


def _run(tmp_path: Path) -> tuple[RunPaths, np.ndarray, list[str], str]:
    paths = run_paths(tmp_path, {**BOLD, "session": "1"}, atlas="DMN", desc="simple")
    rng = np.random.default_rng(3)
    ts = rng.standard_normal((30, 3)).astype(np.float32)
    ts[:, 2] = np.nan  # a seed outside the brain
    return paths, ts, ["PCC", "mPFC", "outside"], params_hash({"strategy": "simple"})


def test_write_run_round_trip_and_is_complete(tmp_path: Path) -> None:
    paths, ts, names, h = _run(tmp_path)
    assert not is_complete(paths, h)
    relmat = np.corrcoef(ts[:, :2].T)
    full = np.full((3, 3), np.nan)
    full[:2, :2] = relmat
    write_run(
        paths,
        ts,
        names,
        {"ParametersHash": h, "SamplingFrequency": 0.5},
        relmat=full,
        relmat_sidecar={"ParametersHash": h},
    )
    assert is_complete(paths, h)
    assert not is_complete(paths, params_hash({"strategy": "other"}))
    back = _read_tsv(paths.timeseries_tsv)
    assert list(back.columns) == names
    np.testing.assert_array_equal(back.to_numpy(np.float32), ts)
    assert set(paths.timeseries_tsv.read_text().splitlines()[1].split("\t")[2:]) == {"n/a"}
    rel = _read_tsv(paths.relmat_tsv)
    assert list(rel.columns) == names
    np.testing.assert_allclose(rel.to_numpy(), full, rtol=1e-8)
    assert json.loads(paths.relmat_json.read_text()) == {"ParametersHash": h}
    assert _leftover_temps(tmp_path) == []


def test_write_run_writes_sidecar_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, ts, names, h = _run(tmp_path)
    order: list[str] = []
    real = outputs.atomic_write_bytes

    def recording(path, data, **options):
        order.append(Path(path).name)
        return real(path, data, **options)

    monkeypatch.setattr(outputs, "atomic_write_bytes", recording)
    write_run(paths, ts, names, {"ParametersHash": h}, relmat=np.eye(3), relmat_sidecar={})
    assert order == [
        paths.timeseries_tsv.name,
        paths.relmat_tsv.name,
        paths.relmat_json.name,
        paths.timeseries_json.name,
    ]


@pytest.mark.parametrize("with_relmat", [True, False])
def test_write_run_fsyncs_the_folder_before_and_after_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_relmat: bool
) -> None:
    """Every file is fsynced; the folder twice per run: data files, barrier, marker, again."""
    paths, ts, names, h = _run(tmp_path)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        events.append("fsync folder" if target.is_dir() else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(f"rename {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    relmat = {"relmat": np.eye(3), "relmat_sidecar": {}} if with_relmat else {}
    write_run(paths, ts, names, {"ParametersHash": h}, **relmat)
    data = [paths.timeseries_tsv] + ([paths.relmat_tsv, paths.relmat_json] if with_relmat else [])
    expected = [e for p in data for e in ("fsync file", f"rename {p.name}")]
    expected += ["fsync folder", "fsync file", f"rename {paths.timeseries_json.name}"]
    assert events == [*expected, "fsync folder"]
    assert is_complete(paths, h)


def test_interrupted_rewrite_is_not_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, ts, names, h = _run(tmp_path)
    write_run(paths, ts, names, {"ParametersHash": h})
    assert is_complete(paths, h)
    # the same run again, failing while writing the TSV: the old marker must be gone
    seen: list[list[Path]] = []
    monkeypatch.setattr(
        outputs, "_write_all", _failing_write_all(OSError(errno.ENOSPC, "No space"), seen)
    )
    with pytest.raises(OutputError, match="disk full"):
        write_run(paths, ts, names, {"ParametersHash": h})
    assert not paths.timeseries_json.exists()
    assert not is_complete(paths, h)
    assert _leftover_temps(tmp_path) == []


def test_write_run_without_relmat_removes_stale_relmat(tmp_path: Path) -> None:
    paths, ts, names, h = _run(tmp_path)
    write_run(paths, ts, names, {"ParametersHash": "old"}, relmat=np.eye(3), relmat_sidecar={})
    assert paths.relmat_tsv.exists()
    write_run(paths, ts, names, {"ParametersHash": h})
    assert not paths.relmat_tsv.exists() and not paths.relmat_json.exists()
    assert is_complete(paths, h)


def test_write_run_checks_its_arguments(tmp_path: Path) -> None:
    paths, ts, names, h = _run(tmp_path)
    with pytest.raises(ValueError, match="seed names"):
        write_run(paths, ts, names[:2], {"ParametersHash": h})
    with pytest.raises(ValueError, match="seed names"):
        write_run(paths, ts[:, 0], names[:1], {"ParametersHash": h})
    with pytest.raises(ValueError, match="ParametersHash"):
        write_run(paths, ts, names, {})
    with pytest.raises(ValueError, match="together"):
        write_run(paths, ts, names, {"ParametersHash": h}, relmat=np.eye(3))
    with pytest.raises(ValueError, match="relmat of shape"):
        write_run(paths, ts, names, {"ParametersHash": h}, relmat=np.eye(2), relmat_sidecar={})
    with pytest.raises(DataError, match="repeat"):
        write_run(paths, ts, ["a", "a", "b"], {"ParametersHash": h})
    assert not paths.directory.exists() or not any(paths.directory.iterdir())


@pytest.mark.parametrize("damage", ["no_tsv", "no_json", "bad_json", "list_json", "no_hash"])
def test_is_complete_false_cases(tmp_path: Path, damage: str) -> None:
    paths, ts, names, h = _run(tmp_path)
    write_run(paths, ts, names, {"ParametersHash": h})
    if damage == "no_tsv":
        paths.timeseries_tsv.unlink()
    elif damage == "no_json":
        paths.timeseries_json.unlink()
    elif damage == "bad_json":
        paths.timeseries_json.write_text('{"ParametersHash": "')
    elif damage == "list_json":
        paths.timeseries_json.write_text(json.dumps([h]))
    else:
        paths.timeseries_json.write_text("{}")
    assert not is_complete(paths, h)


# ------------------------------------------------------------ dataset root

FMRIPREP = {
    "Name": "fMRIPrep - fMRI PREProcessing workflow",
    "BIDSVersion": "1.4.0",
    "DatasetType": "derivative",
    "GeneratedBy": [
        {"Name": "fMRIPrep", "Version": "24.1.1", "CodeURL": "https://example.org/fmriprep"}
    ],
}


def _describe(output_dir: Path, version: str = "0.1.0") -> Path:
    return write_dataset_description(
        output_dir,
        version=version,
        fmriprep_description=FMRIPREP,
        source_datasets=[{"URL": "file:///data/fmriprep", "Version": "24.1.1"}],
        dataset_links={"preprocessed": "file:///data/fmriprep"},
    )


def test_dataset_description_content(tmp_path: Path) -> None:
    path = _describe(tmp_path / "out")
    desc = json.loads(path.read_text())
    assert desc["BIDSVersion"] == outputs.BIDS_VERSION
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0] == {"Name": "bids_spheres", "Version": "0.1.0"}
    assert desc["GeneratedBy"][1:] == FMRIPREP["GeneratedBy"]
    assert desc["SourceDatasets"] == [{"URL": "file:///data/fmriprep", "Version": "24.1.1"}]
    assert desc["DatasetLinks"] == {"preprocessed": "file:///data/fmriprep"}
    assert list(desc)[:3] == ["Name", "BIDSVersion", "DatasetType"]


def test_dataset_description_optional_fields_and_legacy_fmriprep(tmp_path: Path) -> None:
    legacy = {"Name": "fMRIPrep", "PipelineDescription": {"Name": "fMRIPrep", "Version": "1.5.0"}}
    path = write_dataset_description(
        tmp_path,
        version="0.2.0",
        fmriprep_description=legacy,
        source_datasets=[],
        dataset_links={},
        code_url="https://example.org/bids_spheres",
        container={"Type": "docker", "Tag": "bids_spheres:0.2.0"},
    )
    generated = json.loads(path.read_text())["GeneratedBy"]
    assert generated[0]["CodeURL"] == "https://example.org/bids_spheres"
    assert generated[0]["Container"] == {"Type": "docker", "Tag": "bids_spheres:0.2.0"}
    assert generated[1] == {"Name": "fMRIPrep", "Version": "1.5.0"}
    path.unlink()
    write_dataset_description(
        tmp_path, version="0.2.0", fmriprep_description=None, source_datasets=[], dataset_links={}
    )
    assert len(json.loads(path.read_text())["GeneratedBy"]) == 1


def test_dataset_description_identical_is_left_different_is_refused(tmp_path: Path) -> None:
    path = _describe(tmp_path)
    before = path.stat()
    _describe(tmp_path)
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    with pytest.raises(
        OutputError, match=re.escape("bids_spheres 0.1.0 from other inputs")
    ) as info:
        _describe(tmp_path, version="0.2.0")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert json.loads(path.read_text())["GeneratedBy"][0]["Version"] == "0.1.0"


def test_dataset_description_of_another_dataset_or_broken(tmp_path: Path) -> None:
    (tmp_path / "dataset_description.json").write_text(json.dumps(FMRIPREP))
    with pytest.raises(OutputError, match="belongs to another dataset"):
        _describe(tmp_path)
    (tmp_path / "dataset_description.json").write_text("{not json")
    with pytest.raises(OutputError, match="not valid JSON"):
        _describe(tmp_path)


@pytest.mark.parametrize("links", [{"": "file:///x"}, {"a:b": "file:///x"}, {"a": 3}])
def test_dataset_links_are_checked(tmp_path: Path, links: dict) -> None:
    with pytest.raises(DataError, match="DatasetLinks"):
        write_dataset_description(
            tmp_path,
            version="1",
            fmriprep_description=None,
            source_datasets=[],
            dataset_links=links,
        )


def _concurrent_job(output_dir: str, version: str, seeds: bool, barrier, results) -> None:
    barrier.wait(timeout=30)
    try:
        _describe(Path(output_dir), version=version)
        write_bidsignore(output_dir)
        if seeds:
            write_seed_table(output_dir, _seeds(), "DMN", {"name": {"Description": "Seed"}})
        results.put(("ok", version))
    except OutputError as exc:
        results.put(("OutputError", str(exc)))
    except BaseException as exc:  # report anything else to the parent
        results.put(("unexpected", repr(exc)))


def _run_concurrently(output_dir: Path, versions: list[str]) -> list[tuple[str, str]]:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(versions))
    results = context.Queue()
    jobs = [
        context.Process(target=_concurrent_job, args=(str(output_dir), v, True, barrier, results))
        for v in versions
    ]
    for job in jobs:
        job.start()
    out = [results.get(timeout=60) for _ in jobs]
    for job in jobs:
        job.join(timeout=60)
        assert job.exitcode == 0
    return out


def test_concurrent_jobs_write_one_valid_description(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = _run_concurrently(out, ["0.1.0"] * 4)
    assert results == [("ok", "0.1.0")] * 4
    assert json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0] == {
        "Name": "bids_spheres",
        "Version": "0.1.0",
    }
    assert (out / ".bidsignore").read_text().splitlines() == list(BIDSIGNORE_PATTERNS)
    assert _read_tsv(out / "atlas-DMN_seeds.tsv").shape == (2, 5)
    assert _leftover_temps(out) == []


def test_concurrent_jobs_of_different_versions_one_wins(tmp_path: Path) -> None:
    out = tmp_path / "out"
    versions = ["1.0", "2.0", "3.0", "4.0"]
    results = _run_concurrently(out, versions)
    kinds = sorted(kind for kind, _ in results)
    assert kinds == ["OutputError"] * 3 + ["ok"], results
    winner = next(v for kind, v in results if kind == "ok")
    written = json.loads((out / "dataset_description.json").read_text())
    assert written["GeneratedBy"][0]["Version"] == winner


def test_bidsignore_is_idempotent_and_keeps_user_lines(tmp_path: Path) -> None:
    (tmp_path / ".bidsignore").write_text("extra/\n*_timeseries.*")  # no final newline
    path = write_bidsignore(tmp_path)
    lines = path.read_text().splitlines()
    assert lines[:2] == ["extra/", "*_timeseries.*"]
    assert sorted(lines[2:]) == sorted(set(BIDSIGNORE_PATTERNS) - {"*_timeseries.*"})
    first = path.read_text()
    write_bidsignore(tmp_path)
    assert path.read_text() == first
    assert (tmp_path / LOCK_NAME).exists()


def _seeds() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": ["PCC", "mPFC"],
            "x": [0.0, 2.5],
            "y": [-52.0, 54.0],
            "z": [26.0, 0.0],
            "radius": [6.0, np.nan],
        }
    )


def test_seed_table(tmp_path: Path) -> None:
    sidecar = {"radius": {"Description": "Sphere radius", "Units": "mm"}}
    path = write_seed_table(tmp_path, _seeds(), "default mode", sidecar)
    tsv, json_path = seed_table_paths(tmp_path, "default mode")
    assert path == tsv == tmp_path / "atlas-defaultMode_seeds.tsv"
    assert json.loads(json_path.read_text()) == sidecar
    back = _read_tsv(path)
    # '%.9g' writes -52.0 as -52: whole floats read back as int unless a dtype is given
    pd.testing.assert_frame_equal(back, _seeds(), check_dtype=False)
    stamp = path.stat().st_mtime_ns
    write_seed_table(tmp_path, _seeds(), "default mode", sidecar)  # identical: left alone
    assert path.stat().st_mtime_ns == stamp
    other = _seeds().assign(x=[1.0, 2.0])
    with pytest.raises(OutputError, match="different seed set named 'default mode'"):
        write_seed_table(tmp_path, other, "default mode", sidecar)
    json_path.unlink()  # a half-written pair is rewritten
    write_seed_table(tmp_path, other, "default mode", sidecar)
    assert _read_tsv(path)["x"].tolist() == [1.0, 2.0]


# ---------------------------------------------------------- BIDS validator

VALIDATOR = shutil.which("bids-validator-deno")


def _validate(dataset: Path) -> list[dict]:
    result = subprocess.run(
        [VALIDATOR, str(dataset), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return json.loads(result.stdout)["issues"]["issues"]


def _need_validator() -> None:
    if VALIDATOR is None:
        message = "bids-validator-deno is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_written_dataset_passes_the_bids_validator(tmp_path: Path) -> None:
    _need_validator()
    out = tmp_path / "bids_spheres"
    _describe(out)
    write_bidsignore(out)
    write_seed_table(out, _seeds(), "DMN", {"name": {"Description": "Seed name"}})
    h = params_hash({"strategy": "simple"})
    for session in ("1", "2"):
        entities = {**BOLD, "session": session, "run": "01", "res": "2"}
        paths = run_paths(out, entities, atlas="DMN", desc="simple+gsr")
        source = f"sub-01/ses-{session}/func/sub-01_ses-{session}_task-rest_run-01_bold.nii.gz"
        write_run(
            paths,
            np.zeros((5, 2)),
            ["PCC", "mPFC"],
            {"ParametersHash": h, "Sources": [bids_uri("preprocessed", source)]},
            relmat=np.eye(2),
            relmat_sidecar={"ParametersHash": h},
        )
    errors = [i for i in _validate(out) if i["severity"] == "error"]
    assert errors == []
    # the validator does look at our files: without .bidsignore they are not BIDS
    (out / ".bidsignore").unlink()
    codes = {(i["code"], i["location"].rsplit("_", 1)[-1]) for i in _validate(out)}
    assert ("NOT_INCLUDED", "timeseries.tsv") in codes
    assert ("NOT_INCLUDED", "relmat.json") in codes


def test_remove_stale_temps_only_removes_dead_local_processes(tmp_path: Path) -> None:
    from bids_spheres.app.outputs import _HOST, remove_stale_temps

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".a.tsv.tmp-{_HOST}-{dead_pid}-0123abcd"
    live = tmp_path / f".b.tsv.tmp-{_HOST}-{os.getppid()}-0123abcd"
    other_host = tmp_path / f".c.tsv.tmp-otherhost{_HOST}-{dead_pid}-0123abcd"
    unrelated = tmp_path / "a.tsv"
    for p in (stale, live, other_host, unrelated):
        p.write_text("x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and other_host.exists() and unrelated.exists()


def test_app_output_passes_the_bids_validator(tmp_path: Path) -> None:
    """The real output of both levels on the demo dataset."""
    _need_validator()
    from bids_spheres.app.cli import main
    from bids_spheres.app.demo import build_dataset

    demo = build_dataset(tmp_path / "ds", n_subjects=1, sessions=["1"])
    out = tmp_path / "derivatives" / "bids_spheres"
    common = [
        str(demo.root),
        str(out),
        "--seeds",
        str(demo.seeds_tsv),
        "--min-volumes",
        "20",
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert main([*common[:2], "participant", *common[2:]]) == 0
    assert main([*common[:2], "group", *common[2:]]) == 0
    assert list(out.glob("sub-01/ses-1/func/*_timeseries.tsv"))
    errors = [i for i in _validate(out) if i["severity"] == "error"]
    assert errors == [], errors
