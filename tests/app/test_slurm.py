"""The SLURM array script's participant selection, without SLURM."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "bids_spheres_array.sbatch"


def _select(labels: Path, index: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; select_label "$0" "$1"', str(labels), index],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def participants(tmp_path: Path) -> Path:
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t20\nsub-02\t31\n\nsub-A3\t44\n")
    return path


def test_selects_the_ith_participant(participants: Path) -> None:
    assert [_select(participants, str(i)).stdout.strip() for i in (1, 2, 3)] == ["01", "02", "A3"]


def test_plain_label_list(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("# cohort 1\n01\nsub-07\n")
    assert _select(labels, "2").stdout.strip() == "07"


@pytest.mark.parametrize(
    ("index", "code", "message"),
    [
        ("4", 65, "no participant number 4"),
        ("0", 64, "not a positive"),
        ("x", 64, "not a positive"),
    ],
)
def test_bad_index(participants: Path, index: str, code: int, message: str) -> None:
    done = _select(participants, index)
    assert done.returncode == code and message in done.stderr


def test_unsafe_label_is_refused(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("../../etc\n")
    done = _select(labels, "1")
    assert done.returncode == 65 and "not a BIDS label" in done.stderr


def test_count_and_array_task_environment(participants: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BIDS_DIR": str(tmp_path),
        "OUTPUT_DIR": str(tmp_path / "out"),
        "LABELS_FILE": str(participants),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "--count"], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "3"
    # a task without SIF says what is missing and runs nothing
    env["SLURM_ARRAY_TASK_ID"] = "2"
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "SIF" in done.stderr
    assert not (tmp_path / "out").exists()
