"""Kill-and-resume and concurrent jobs on one output directory (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import run_outputs

from bids_spheres.app.demo import DemoInfo


@pytest.fixture(scope="module")
def demo(demo_three_subjects: DemoInfo) -> DemoInfo:
    """3 subjects x 2 runs: the shared, read-only ``demo_three_subjects`` (tests/conftest.py)."""
    return demo_three_subjects


def _command(demo, out: Path, *extra: str, work: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bids_spheres",
        str(demo.root),
        str(out),
        "participant",
        "--seeds",
        str(demo.seeds_tsv),
        "--work-dir",
        str(work or out.parent / f"work-{out.name}"),
        "-q",
        *extra,
    ]


def _check_consistent(out: Path) -> None:
    """Only complete TSV/JSON pairs: every JSON parses and has its TSV."""
    for js in out.rglob("sub-*/**/*_timeseries.json"):
        json.loads(js.read_text())
        assert js.with_suffix(".tsv").is_file(), js
    for tsv in out.rglob("sub-*/**/*.tsv"):
        text = tsv.read_text()
        assert text.endswith("\n") and "\t" in text.splitlines()[0], tsv


def test_kill_and_resume(demo, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    subprocess.run(_command(demo, reference), check=True)
    expected = run_outputs(reference)
    assert len([k for k in expected if k.endswith("_timeseries.tsv")]) == 6

    delays = [0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4, 2.8, 3.2, 3.6]
    for i, delay in enumerate(delays):
        out = tmp_path / f"killed{i}"
        proc = subprocess.Popen(
            _command(demo, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            _check_consistent(out)
        done = subprocess.run(_command(demo, out), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert run_outputs(out) == expected, f"after a kill at {delay} s"
        strays = [p for p in out.rglob("*") if ".tmp-" in p.name]
        assert not strays, strays


def test_concurrent_jobs_on_one_output_dir(demo, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    jobs = [
        ("--participant-label", "01"),
        ("--participant-label", "02"),
        ("--participant-label", "03"),
        ("--participant-label", "01"),  # the same participant twice
    ]
    procs = [
        subprocess.Popen(
            _command(demo, out, *job, work=tmp_path / f"w{i}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, job in enumerate(jobs)
    ]
    results = [(*p.communicate(), p.returncode) for p in procs]
    assert all(code == 0 for _, _, code in results), results
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    _check_consistent(out)
    reference = tmp_path / "serial"
    subprocess.run(_command(demo, reference), check=True)
    assert run_outputs(out) == run_outputs(reference)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert os.listdir(out)
