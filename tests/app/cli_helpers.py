"""Helpers shared by the app's CLI tests (imported by the test modules of this folder)."""

from __future__ import annotations

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
