"""Faults that are not a run's: a full disk stops the job (73); a bug exits 70, not 1.

Disk full is simulated in a real job (a subprocess) by a small script that
makes the low-level write of every output file, or the building of the pybids
index, fail with ``ENOSPC`` -- in the coordinator and, through ``fork``, in the
workers and the indexing child.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bids_spheres import errors
from bids_spheres.app import cli
from bids_spheres.app.demo import DemoInfo
from bids_spheres.errors import DataError

_JOB = """
import errno, os, sqlite3, sys
from pathlib import Path

from bids_spheres.app import cli, discovery, outputs

ATTEMPTS = Path(sys.argv[1])
WHERE = sys.argv[2]
_write_all = outputs._write_all
_make_layout = discovery.make_layout


def full_write_all(fd, data):
    target = os.readlink(f"/proc/self/fd/{{fd}}")
    if "/sub-" in target:  # a run's output file: the disk is full
        with open(ATTEMPTS, "a") as log:
            log.write(f"{{os.getpid()}}\\n")
        raise OSError(errno.ENOSPC, "No space left on device")
    _write_all(fd, data)


def full_index(*args, **kwargs):
    if WHERE == "index-sqlite":
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = 13  # SQLITE_FULL, as sqlite3 sets it
        raise error
    raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))


if __name__ == "__main__":
    if WHERE == "runs":
        outputs._write_all = full_write_all
    else:
        discovery.make_layout = full_index
    sys.exit(cli.main(sys.argv[3:]))
"""


def _job(demo: DemoInfo, tmp_path: Path, where: str, nprocs: int) -> tuple[int, str, int]:
    script = tmp_path / "job.py"
    script.write_text(_JOB.format())
    attempts = tmp_path / "attempts.txt"
    out = tmp_path / "out"
    argv = [str(demo.root), str(out), "participant", "--seeds", str(demo.seeds_tsv)]
    argv += ["--work-dir", str(tmp_path / "work"), "--nprocs", str(nprocs), "-q"]
    done = subprocess.run(
        [sys.executable, str(script), str(attempts), where, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    n_attempts = len(attempts.read_text().splitlines()) if attempts.exists() else 0
    strays = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not strays, strays
    return done.returncode, done.stderr, n_attempts


@pytest.mark.parametrize("nprocs", [1, 2])
def test_disk_full_while_writing_runs_stops_the_job_with_73(
    demo_three_subjects: DemoInfo, tmp_path: Path, nprocs: int
) -> None:
    code, err, attempts = _job(demo_three_subjects, tmp_path, "runs", nprocs)
    assert code == 73, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bids_spheres: error: cannot write "), err
    # the first file a run writes: the report's carpet (before the run's own files, so
    # that the completion marker comes last), or the timeseries with --no-reports
    assert "disk full" in last and ("_carpet.svg" in last or "_timeseries" in last), last
    assert "run failed" not in err  # not six per-run failures
    # the remaining runs are not attempted: one per worker (plus what was queued)
    assert 1 <= attempts <= (1 if nprocs == 1 else 4), attempts


@pytest.mark.parametrize("how", ["index-oserror", "index-sqlite"])
def test_disk_full_under_the_index_database_is_73_naming_it(
    demo_one_run: DemoInfo, tmp_path: Path, how: str
) -> None:
    code, err, _ = _job(demo_one_run, tmp_path, how, 2)
    assert code == 73, err
    (line,) = err.strip().splitlines()
    database = tmp_path / "work" / "bids_db"
    assert line.startswith(f"bids_spheres: error: cannot write the pybids index in {database}")
    assert "internal error" not in line and "--work-dir" in line


def test_unexpected_exception_is_an_internal_error_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from bids_spheres.app import workflow

    def broken(config: object) -> int:
        raise KeyError("oops")

    monkeypatch.setattr(workflow, "participant", broken)
    code = cli.main([str(tmp_path), str(tmp_path / "out"), "participant"])
    assert code == 70
    assert getattr(errors, "INTERNAL_ERROR_EXIT_CODE", None) == 70
    assert cli.EXIT_CODES.get("internal error") == 70
    assert code != cli.EXIT_CODES["some runs failed"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("bids_spheres: internal error: KeyError: 'oops'")


def test_user_errors_keep_their_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from bids_spheres.app import workflow

    def bad(config: object) -> int:
        raise DataError("seeds.tsv row 3: x is not a number; fix the file")

    monkeypatch.setattr(workflow, "participant", bad)
    assert cli.main([str(tmp_path), str(tmp_path / "out"), "participant"]) == 65
    assert capsys.readouterr().err == (
        "bids_spheres: error: seeds.tsv row 3: x is not a number; fix the file\n"
    )


def test_out_of_memory_is_one_line_not_a_bug_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from bids_spheres.app import workflow

    def hungry(config: object) -> int:
        raise MemoryError

    monkeypatch.setattr(workflow, "participant", hungry)
    assert cli.main([str(tmp_path), str(tmp_path / "out"), "participant"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "report it" not in err
