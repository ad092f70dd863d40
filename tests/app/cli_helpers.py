"""Helpers shared by the app's CLI tests (imported by the test modules of this folder)."""

from __future__ import annotations

import json
from pathlib import Path

from bids_spheres.app.cli import main


def run_participant(data: Path, out: Path, *extra: str) -> int:
    """The participant level through the CLI on a demo dataset (its own seeds, work dir
    beside ``out``); returns the exit code."""
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


def run_outputs(out: Path) -> dict[str, bytes]:
    """Every run file's bytes; a timeseries sidecar without its ``CommandLine`` (jobs
    compared were started with other options: --participant-label, --dask-scheduler, ...)."""
    files = {}
    for p in sorted(out.rglob("sub-*/**/*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name.endswith("_timeseries.json"):
                sidecar = json.loads(data)
                sidecar.pop("CommandLine")
                data = json.dumps(sidecar, sort_keys=True).encode()
            files[str(p.relative_to(out))] = data
    return files
