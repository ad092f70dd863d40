"""Hostile values (issue 13): implausible repetition times, cut-offs at Nyquist, corrupt
deflate data, all-NaN spheres, huge radii and coordinates, bad Dask addresses -- each a
one-line error with its BIDS-App exit code, the other runs still processed."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_participant as _run

from bids_spheres.app.cli import main
from bids_spheres.app.demo import DemoInfo


def _bold(data: Path, run: str = "1") -> Path:
    return next(data.glob(f"sub-01/func/*run-{run}*_desc-preproc_bold.nii.gz"))


def _outputs(out: Path) -> list[Path]:
    return sorted(out.glob("sub-*/func/*_timeseries.tsv"))


def _failed(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("bids_spheres: run failed")]


# ------------------------------------------------------------ item 5: TR and Nyquist


def test_repetition_time_in_milliseconds_fails_that_run(
    demo_copy: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = demo_copy.root
    bold = _bold(data)
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    meta = json.loads(sidecar.read_text())
    meta["RepetitionTime"] = 2000
    sidecar.write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert _run(data, out) == 1
    failed = _failed(capsys.readouterr().err)
    assert len(failed) == 1, failed
    assert bold.name in failed[0]
    assert "RepetitionTime 2000 s" in failed[0]
    assert sidecar.name in failed[0]
    assert "looks like milliseconds: write 2" in failed[0]
    assert len(_outputs(out)) == 3


def _set_header_step(bold: Path, step: float, unit: str) -> None:
    img = nib.load(bold)
    data = np.asarray(img.dataobj)
    header = img.header.copy()
    header.set_xyzt_units("mm", unit)
    header.set_zooms((*header.get_zooms()[:3], step))
    nib.save(nib.Nifti1Image(data, img.affine, header), bold)


def test_an_implausible_header_repetition_time_asks_for_the_sidecar_value(
    demo_copy: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No RepetitionTime in any sidecar, and a header of 2000 s: the message names the
    header as the origin and asks for RepetitionTime in the sidecar (not to 'fix' one)."""
    data = demo_copy.root
    bold = _bold(data)
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    meta = json.loads(sidecar.read_text())
    del meta["RepetitionTime"]
    sidecar.write_text(json.dumps(meta))
    _set_header_step(bold, 2000.0, "sec")
    out = tmp_path / "out"
    assert _run(data, out) == 1
    (failed,) = _failed(capsys.readouterr().err)
    assert f"(from the NIfTI header of {bold})" in failed
    assert failed.endswith("add RepetitionTime (seconds) to the BOLD's JSON sidecar")
    assert "looks like milliseconds: write 2" in failed


@pytest.mark.parametrize(
    ("step", "unit", "loud", "known"),
    [
        (2.5, "sec", True, ""),  # a real disagreement: said on the console
        (1.0, "sec", False, "a placeholder"),  # fMRIPrep 23.2.0 (nipreps/fmriprep#3216)
        (2000.0, "sec", False, "milliseconds labelled as seconds"),  # older fMRIPrep
        (2000.0, "msec", None, ""),  # the same time: nothing
        (1.0, "unknown", None, ""),  # nibabel's default step, no unit: nothing
        (0.0, "sec", None, ""),  # fMRIPrep's multi-echo outputs: nothing
    ],
)
def test_a_header_time_step_that_disagrees_with_the_sidecar_is_noted(
    demo_copy: DemoInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    step: float,
    unit: str,
    loud: bool | None,
    known: str,
) -> None:
    """The sidecar's RepetitionTime (2 s) is used (BIDS). A header stating another time
    step is noted in the run's sidecar; on the console only when no known fMRIPrep
    header fault explains it (those would repeat on every run)."""
    data = demo_copy.root
    bold = _bold(data)
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    _set_header_step(bold, step, unit)
    out = tmp_path / "out"
    assert _run(data, out) == 0
    err = capsys.readouterr().err
    console = [line for line in err.splitlines() if "NIfTI header gives" in line]
    written = {
        p.name.split("_space")[0]: json.loads(p.read_text())
        for p in sorted(out.glob("sub-*/func/*_timeseries.json"))
    }
    assert len(written) == 4
    assert all(w["RepetitionTime"] == 2 for w in written.values())
    notes = {
        name: [m for m in w["Warnings"] if "NIfTI header gives" in m]
        for name, w in written.items()
    }
    this_run = bold.name.split("_space")[0]
    assert all(not n for name, n in notes.items() if name != this_run)
    if loud is None:
        assert console == [] and notes[this_run] == []
        return
    (note,) = notes[this_run]
    assert f"a time step of {step:g} s" in note and "RepetitionTime is 2 s" in note
    assert f"the JSON sidecar bids:fmriprep:sub-01/func/{sidecar.name};" in note  # portable
    assert str(data) not in note
    assert known in note
    if loud:
        assert len(console) == 1 and bold.name in console[0] and str(sidecar) in console[0]
    else:
        assert console == []


@pytest.mark.parametrize(("option", "value"), [("--high-pass", "0.25"), ("--low-pass", "0.3")])
def test_cutoff_at_or_above_nyquist_fails_every_run(
    demo_dataset: DemoInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
) -> None:
    out = tmp_path / "out"
    assert _run(demo_dataset.root, out, option, value) == 1  # TR 2 s: Nyquist 0.25 Hz
    failed = _failed(capsys.readouterr().err)
    assert len(failed) == 4, failed
    for line in failed:
        assert f"{option} {value} Hz is at or above the Nyquist frequency 0.25 Hz" in line
        assert "RepetitionTime 2 s" in line
    assert _outputs(out) == []


# ------------------------------------------------------- item 6: a flipped deflate byte


@pytest.mark.parametrize("where", [0.5, 0.9])
def test_flipped_byte_in_deflate_data_fails_that_run_alone(
    demo_copy: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: float
) -> None:
    data = demo_copy.root
    bold = _bold(data)
    blob = bytearray(bold.read_bytes())
    i = int(len(blob) * where)  # inside the deflate data (header: 10 bytes, trailer: 8)
    blob[i] ^= 0x01
    bold.write_bytes(bytes(blob))
    out = tmp_path / "out"
    assert _run(data, out) == 1
    err = capsys.readouterr().err
    failed = _failed(err)
    assert len(failed) == 1, err
    assert str(bold) in failed[0].split(": ", 2)[-1] or bold.name in failed[0].split(": ", 2)[-1]
    assert "Traceback" not in err
    assert len(_outputs(out)) == 3
    assert not any(bold.name.split("_desc-")[0] in p.name for p in _outputs(out))


# ------------------------------------------------------------ item 7: an all-NaN sphere


def test_all_nan_sphere_is_a_missing_seed_counted_by_the_group(
    demo_copy: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nibabel as nib
    import numpy as np
    import pandas as pd

    data = demo_copy.root
    seeds = pd.read_csv(data / "code" / "demo_seeds.tsv", sep="\t").set_index("name")
    path = _bold(data)
    img = nib.load(path)
    arr = np.asarray(img.dataobj).astype(np.float32)
    i, j, k = np.rint(np.linalg.inv(img.affine) @ np.r_[seeds.loc["PCC", ["x", "y", "z"]], 1])[
        :3
    ].astype(int)
    arr[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4, :] = np.nan  # the whole PCC sphere
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), path)
    out = tmp_path / "out"
    assert _run(data, out) == 0
    tsv = next(p for p in _outputs(out) if path.name.split("_desc-")[0] in p.name)
    table = pd.read_csv(tsv, sep="\t", na_values=["n/a"], keep_default_na=False)
    assert table["PCC"].isna().all()
    others = table.drop(columns="PCC")
    assert np.isfinite(others.to_numpy()).all()
    sidecar = json.loads(tsv.with_suffix(".json").read_text())
    assert sidecar["Seeds"]["PCC"]["Status"] == "n/a: no finite voxel values"
    assert sidecar["Seeds"]["PCC"]["TemporalSNR"] is None
    assert sidecar["MissingSeeds"] == ["PCC"]
    relmat = next(tsv.parent.glob(path.name.split("_desc-")[0] + "_*_relmat.tsv"))
    matrix = pd.read_csv(relmat, sep="\t", na_values=["n/a"], keep_default_na=False)
    pcc = list(matrix.columns).index("PCC")
    assert matrix.iloc[pcc].isna().all() and matrix["PCC"].isna().all()
    assert np.isfinite(matrix.drop(columns="PCC").drop(index=pcc).to_numpy()).all()
    assert "1 seed(s) with no finite voxel value written as n/a: PCC" in capsys.readouterr().err

    assert main([str(data), str(out), "group", "--work-dir", str(tmp_path / "work")]) == 0
    group_seeds = next((out / "group").glob("*_seeds.tsv"))
    summary = pd.read_csv(group_seeds, sep="\t", na_values=["n/a"], keep_default_na=False)
    summary = summary.set_index("name")
    assert summary.loc["PCC", "fraction_missing"] == pytest.approx(0.25)
    assert (summary.drop(index="PCC")["fraction_missing"] == 0).all()


# ------------------------------------- item 13: huge radii and coordinates, Dask addresses


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("radius", ["1e6", "1e300", "100.5"])
def test_huge_radius_is_a_usage_error(
    demo_dataset: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str], radius: str
) -> None:
    out = tmp_path / "out"
    assert _run(demo_dataset.root, out, "--radius", radius) == 64
    line = _one_error_line(capsys.readouterr().err)
    assert f"--radius {float(radius):g} mm is out of range" in line
    assert "from 0 to 100 mm" in line
    assert _outputs(out) == []


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("x", "1e400", "which is not finite"),
        ("y", "-5000", "which is outside +-1000 mm"),
        ("radius", "1e6", "which is above 100 mm"),
        ("radius", "1e300", "which is above 100 mm"),
    ],
)
def test_huge_seed_values_are_a_data_error(
    demo_dataset: DemoInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    column: str,
    value: str,
    why: str,
) -> None:
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text("name\tx\ty\tz\tradius\nA\t0\t-52\t26\t5\nB\t0\t50\t-5\t5\n")
    text = seeds.read_text().splitlines()
    header = text[0].split("\t")
    fields = text[2].split("\t")
    fields[header.index(column)] = value
    text[2] = "\t".join(fields)
    seeds.write_text("\n".join(text) + "\n")
    out = tmp_path / "out"
    assert _run(demo_dataset.root, out, "--seeds", str(seeds)) == 65
    line = _one_error_line(capsys.readouterr().err)
    assert f"line 3 has {column} = {value!r}, {why}" in line
    assert str(seeds) in line
    assert _outputs(out) == []


def test_malformed_dask_address_is_a_usage_error(
    demo_dataset: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _run(demo_dataset.root, out, "--dask-scheduler", "not a url") == 64
    line = _one_error_line(capsys.readouterr().err)
    assert "--dask-scheduler 'not a url' is not a Dask scheduler address" in line
    assert "tcp://HOST:PORT" in line
    assert not out.exists() or _outputs(out) == []


def test_unroutable_dask_address_fails_in_seconds(
    demo_dataset: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    out = tmp_path / "out"
    start = time.monotonic()
    assert _run(demo_dataset.root, out, "--dask-scheduler", "tcp://10.255.255.1:8786") == 64
    assert time.monotonic() - start < 30
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot connect to the Dask scheduler at tcp://10.255.255.1:8786" in line
    assert _outputs(out) == []


# ---------------------------------------------- item 15: no n x n matrix for huge seed sets


def test_above_max_relmat_seeds_no_matrix_is_made(
    demo_dataset: DemoInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above outputs.MAX_RELMAT_SEEDS (2000; lowered to 5 here, the demo has 8 seeds)
    no run writes a relmat and the group skips the connectome, saying why; the
    timeseries are those of a run under the limit."""
    from bids_spheres.app import outputs

    data = demo_dataset.root
    small = tmp_path / "small"
    assert _run(data, small) == 0
    monkeypatch.setattr(outputs, "MAX_RELMAT_SEEDS", 5)
    out = tmp_path / "out"
    assert _run(data, out) == 0
    assert len(_outputs(out)) == 4
    assert list(out.rglob("*_relmat.*")) == []
    for tsv, reference in zip(_outputs(out), _outputs(small), strict=True):
        assert tsv.read_bytes() == reference.read_bytes()
        note = json.loads(tsv.with_suffix(".json").read_text())["RelationshipMatrix"]
        assert note.startswith("not written: 8 seeds is more than 5; a 8 x 8 TSV")
        assert "RelationshipMatrix" not in json.loads(reference.with_suffix(".json").read_text())
    capsys.readouterr()

    # a group run of an earlier, smaller seed set left connectome files: removed
    (out / "group").mkdir()
    stale = out / "group" / "atlas-demoseeds_meas-FisherZMean_desc-simple_relmat.tsv"
    stale.write_text("old\n")
    assert main([str(data), str(out), "group", "--work-dir", str(tmp_path / "work")]) == 0
    err = capsys.readouterr().err
    assert "no group connectome for atlas-demoseeds desc-simple: 8 seeds is more than 5" in err
    group = sorted(p.name for p in (out / "group").iterdir())
    assert not [name for name in group if "relmat" in name], group
    assert any(name.endswith("_seeds.tsv") for name in group)
    assert any(name.endswith("_runs.tsv") for name in group)
    report = (out / "group" / "report.html").read_text()
    assert "no group connectome for atlas-demoseeds desc-simple" in report
