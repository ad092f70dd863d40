"""pybids (and SQLAlchemy under it) stays in the indexing child.

Importing pybids costs ~0.3 s and ~25 MB; only the short-lived child that builds
and queries the index needs it (:func:`bids_spheres.app.workflow.participant`
runs discovery with :func:`bids_spheres.app.execution.in_child`). The
coordinating process and the workers that process runs must not import it:
neither by importing the app, nor by unpickling a
:class:`~bids_spheres.app.run.RunTask`, nor while processing a run.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bids_spheres.app import confounds, discovery, seeds
from bids_spheres.app.config import RunConfig
from bids_spheres.app.demo import DemoInfo
from bids_spheres.app.run import RunTask

PYBIDS = ("bids", "sqlalchemy")


def _python(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "modules",
    [
        ["bids_spheres.app.workflow"],
        ["bids_spheres.app.cli", "bids_spheres.app.execution", "bids_spheres.app.run"],
    ],
)
def test_importing_the_app_does_not_import_pybids(modules: list[str]) -> None:
    loaded = _python(
        f"""
        import json, sys
        import {", ".join(modules)}
        print(json.dumps({{name: name in sys.modules for name in {PYBIDS!r}}}))
        """
    )
    assert loaded == {"bids": False, "sqlalchemy": False}


def test_a_worker_unpickles_and_processes_a_run_without_pybids(
    demo_small: DemoInfo, tmp_path: Path
) -> None:
    """A fresh interpreter (a spawn/forkserver or Dask worker) given one pickled RunTask."""
    config = RunConfig(
        bids_dir=demo_small.root,
        output_dir=tmp_path / "out",
        analysis_level="participant",
        work_dir=tmp_path / "work",
        seeds=str(demo_small.seeds_tsv),
    )
    layout = discovery.make_layout(demo_small.fmriprep_dir, tmp_path / "db")
    (run,) = discovery.collect_runs(layout)
    task = RunTask(
        config, run, seeds.load(config.seeds), confounds.load_strategy("simple"), "fmriprep"
    )
    pickled = tmp_path / "task.pickle"
    pickled.write_bytes(pickle.dumps(task))

    report = _python(
        f"""
        import json, pickle, sys
        from bids_spheres.app.run import process_run

        task = pickle.loads(open(sys.argv[1], "rb").read())
        unpickled = [name for name in {PYBIDS!r} if name in sys.modules]
        result = process_run(task)
        processed = [name for name in {PYBIDS!r} if name in sys.modules]
        print(json.dumps({{"status": result.status, "reason": result.reason,
                          "unpickled": unpickled, "processed": processed}}))
        """,
        str(pickled),
    )
    assert report == {"status": "written", "reason": "", "unpickled": [], "processed": []}
    assert list((tmp_path / "out").glob("sub-*/func/*_timeseries.tsv"))


_JOB = """
import json, os, sys
from pathlib import Path

from bids_spheres.app import cli, execution, run, workflow

REPORTS = Path(sys.argv[1])


def _report(role):
    loaded = [name for name in {pybids!r} if name in sys.modules]
    (REPORTS / f"{{role}}-{{os.getpid()}}.json").write_text(json.dumps(loaded))


def discover_and_report(*args):
    runs = _real_discover(*args)
    _report("indexing")
    return runs


def process_run_and_report(task):
    result = run.process_run(task)
    _report("worker")
    return result


_real_discover = workflow._discover
if __name__ == "__main__":
    # the functions the pool and the indexing child are given, wrapped to report what
    # their process has imported; pickled by reference to this script
    workflow._discover = discover_and_report
    execution.process_run = process_run_and_report
    code = cli.main(sys.argv[2:])
    _report("coordinator")
    sys.exit(code)
"""


def test_participant_job_keeps_pybids_in_the_indexing_child(
    demo_one_run: DemoInfo, tmp_path: Path
) -> None:
    """A real job, --nprocs 2 on 2 runs: only the indexing child imports pybids."""
    script = tmp_path / "job.py"
    script.write_text(_JOB.format(pybids=PYBIDS))
    reports = tmp_path / "reports"
    reports.mkdir()
    argv = [str(demo_one_run.root), str(tmp_path / "out"), "participant"]
    argv += ["--seeds", str(demo_one_run.seeds_tsv), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(
        [sys.executable, str(script), str(reports), *argv, "--nprocs", "2", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, list[tuple[int, list[str]]]] = {}
    for path in reports.iterdir():
        role, pid = path.stem.split("-")
        found.setdefault(role, []).append((int(pid), json.loads(path.read_text())))
    (coordinator,) = found["coordinator"]
    (indexing,) = found["indexing"]
    workers = found["worker"]
    assert coordinator[1] == []
    assert all(loaded == [] for _, loaded in workers), workers
    assert {pid for pid, _ in workers}.isdisjoint({coordinator[0], indexing[0]})
    assert indexing[0] != coordinator[0] and indexing[1] == list(PYBIDS)  # the check sees it
    assert len(list((tmp_path / "out").glob("sub-*/func/*_timeseries.tsv"))) == 2
