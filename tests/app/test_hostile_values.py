"""Hostile values (issue 13): implausible repetition times, cut-offs at Nyquist, corrupt
deflate data, all-NaN spheres, huge radii and coordinates, bad Dask addresses -- each a
one-line error with its BIDS-App exit code, the other runs still processed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_spheres.app.cli import main
from bids_spheres.app.demo import DemoInfo


def _bold(data: Path, run: str = "1") -> Path:
    return next(data.glob(f"sub-01/func/*run-{run}*_desc-preproc_bold.nii.gz"))


def _run(data: Path, out: Path, *extra: str) -> int:
    return main(
        [
            str(data),
            str(out),
            "participant",
            "--seeds",
            str(data / "code" / "demo_seeds.tsv"),
            "--work-dir",
            str(out.parent / "work"),
            *extra,
        ]
    )


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
