"""--dask-scheduler: runs as tasks on a distributed LocalCluster (worker processes, loopback)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import distributed
import pytest
from cli_helpers import run_outputs

from bids_spheres.app.cli import main
from bids_spheres.app.demo import DemoInfo


@pytest.fixture(scope="module")
def demo(demo_three_subjects: DemoInfo) -> DemoInfo:
    """3 subjects x 2 runs: the shared, read-only ``demo_three_subjects`` (tests/conftest.py)."""
    return demo_three_subjects


@pytest.fixture
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    ) as local:
        yield local


def _args(demo, out: Path, *extra: str) -> list[str]:
    return [
        str(demo.root),
        str(out),
        "participant",
        "--seeds",
        str(demo.seeds_tsv),
        "--work-dir",
        str(out.parent / f"work-{out.name}"),
        *extra,
    ]


def test_dask_results_equal_local(demo, cluster, tmp_path: Path) -> None:
    local = tmp_path / "local"
    assert main(_args(demo, local)) == 0
    remote = tmp_path / "remote"
    assert main(_args(demo, remote, "--dask-scheduler", cluster.scheduler_address)) == 0
    assert run_outputs(remote) == run_outputs(local)
    assert len([k for k in run_outputs(local) if k.endswith("_timeseries.tsv")]) == 6


def test_killed_worker_loses_nothing(demo, cluster, tmp_path: Path) -> None:
    local = tmp_path / "local"
    assert main(_args(demo, local)) == 0
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        out = tmp_path / "remote"
        codes: list[int] = []
        runner = threading.Thread(
            target=lambda: codes.append(
                main(_args(demo, out, "--dask-scheduler", cluster.scheduler_address))
            )
        )
        runner.start()
        # kill a worker as soon as it has started working on a run
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not client.processing().get(
            next(a for a, p in pids.items() if p == victim), ()
        ):
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        runner.join(timeout=180)
        assert codes == [0]
        assert run_outputs(out) == run_outputs(local)
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    finally:
        client.close()


def test_unreachable_scheduler_is_a_usage_error(
    demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = main(_args(demo, tmp_path / "o", "--dask-scheduler", "tcp://127.0.0.1:9"))
    assert code == 64
    assert "cannot connect to the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
