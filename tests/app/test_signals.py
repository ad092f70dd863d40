"""SIGTERM/SIGHUP/SIGKILL of a real ``--nprocs 2`` job: nothing survives, nothing is left.

Each test starts the CLI in a subprocess, records every descendant process
while it runs (from ``/proc/*/stat``), sends a signal at a known stage and
checks: the exit code (143 SIGTERM, 129 SIGHUP), that every
recorded process is gone within seconds, that the caller's pipes reach EOF
(no process holds them), and that no temporary file remains in the output.
Runs in flight: the job runs through a small script whose workers block inside
their first write (a temporary file open beside the target), so the signal
comes while both workers are in a run with a temporary file on disk.
Indexing: signalled while the one-worker pybids indexing child is alive.
The inputs are the shared, read-only demo: the job only reads them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_spheres.app.demo import DemoInfo

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


_JOB = """
import os, sys, time

from bids_spheres.app import cli, outputs

COORDINATOR = os.getpid()
_write_all = outputs._write_all


def slow_write_all(fd, data):
    if os.getpid() != COORDINATOR:  # a worker: block inside the run's first write
        time.sleep(600)
    _write_all(fd, data)


if __name__ == "__main__":
    outputs._write_all = slow_write_all  # the forked workers inherit it
    sys.exit(cli.main(sys.argv[1:]))
"""


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _ppid_and_state(int(entry))
            if info is not None:
                children.setdefault(info[0], []).append(int(entry))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    info = _ppid_and_state(pid)
    return info is not None and info[1] != "Z"  # a zombie has exited


def _start(demo: DemoInfo, out: Path, *, blocking: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bids_spheres"]
    if blocking:
        script = out.parent / "job.py"
        script.write_text(_JOB)
        command = [sys.executable, str(script)]
    command += [str(demo.root), str(out), "participant"]
    command += ["--seeds", str(demo.seeds_tsv), "--work-dir", str(out.parent / "work")]
    command += ["--nprocs", "2", "-q"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name] if out.exists() else []


def _wait_for_a_write(proc: subprocess.Popen[str], out: Path, seen: set[int]) -> set[int]:
    """Poll until both workers are alive and one is inside a write (a temporary file exists).

    The other worker is in a run too (waiting for the folder's lock, or computing).
    Returns the two workers' pids; every descendant goes to ``seen``.
    """
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            found = _descendants(proc.pid)
            seen |= found
            workers = {p for p in found if _alive(p) and _ppid_and_state(p)[0] == proc.pid}
            if len(workers) == 2 and _temps(out):
                return workers
            time.sleep(0.02)
        raise AssertionError(f"no worker ever wrote a temporary file in {out}")
    except BaseException:
        _kill_all(proc, seen)
        raise


def _wait_for_children(proc: subprocess.Popen[str], n: int, seen: set[int]) -> set[int]:
    """Poll until ``proc`` has exactly ``n`` live children; every descendant goes to ``seen``."""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            found = _descendants(proc.pid)
            seen |= found
            live = {p for p in found if _alive(p) and _ppid_and_state(p)[0] == proc.pid}
            if len(live) == n:
                return live
            time.sleep(0.02)
        raise AssertionError(f"the job never had {n} child process(es)")
    except BaseException:
        _kill_all(proc, seen)
        raise


def _kill_all(proc: subprocess.Popen[str], seen: set[int]) -> None:
    for pid in [p for p in seen | _descendants(proc.pid) if _alive(p)]:
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.communicate()


def _check_nothing_left(proc: subprocess.Popen[str], seen: set[int], out: Path) -> str:
    try:
        _, err = proc.communicate(timeout=20)  # EOF: no survivor holds the pipes
    except subprocess.TimeoutExpired:
        survivors = [p for p in seen if _alive(p)]
        _kill_all(proc, seen)
        raise AssertionError(f"the caller's pipes stay open; alive: {survivors}") from None
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [p for p in seen if _alive(p)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes of the job survive: {survivors}"
    strays = _temps(out)
    assert not strays, strays
    return err


@pytest.mark.parametrize(
    ("signum", "code", "why"),
    [
        (signal.SIGTERM, 143, "terminated by SIGTERM"),
        (signal.SIGHUP, 129, "terminated by SIGHUP"),
        (signal.SIGINT, 130, "interrupted"),  # Ctrl-C
    ],
)
def test_signal_mid_run_stops_every_worker(
    demo_three_subjects: DemoInfo, tmp_path: Path, signum: int, code: int, why: str
) -> None:
    out = tmp_path / "out"
    proc = _start(demo_three_subjects, out, blocking=True)
    seen: set[int] = set()
    _wait_for_a_write(proc, out, seen)  # both workers in a run, one mid-write
    proc.send_signal(signum)
    err = _check_nothing_left(proc, seen, out)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"bids_spheres: {why}; stopped"
    assert not list(out.glob("sub-*/func/*_timeseries.tsv"))  # no run finished


def test_sigterm_during_indexing_stops_the_indexing_child(
    demo_three_subjects: DemoInfo, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = _start(demo_three_subjects, out)
    seen: set[int] = set()
    (child,) = _wait_for_children(proc, 1, seen)  # the one-worker pybids indexing child
    assert _alive(child)
    proc.send_signal(signal.SIGTERM)
    err = _check_nothing_left(proc, seen, out)
    assert proc.returncode == 143, err
    assert "terminated by SIGTERM" in err
    assert not list(out.glob("sub-*/func/*_timeseries.tsv"))  # no run had started


def test_sigkill_of_the_coordinator_leaves_no_worker(
    demo_three_subjects: DemoInfo, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = _start(demo_three_subjects, out, blocking=True)
    seen: set[int] = set()
    _wait_for_a_write(proc, out, seen)
    proc.send_signal(signal.SIGKILL)
    _check_nothing_left(proc, seen, out)  # the workers removed their own temporary files
    assert proc.returncode == -signal.SIGKILL


_PIPES = """
import errno, threading
from bids_spheres.app import execution

def fail(code):
    raise OSError(code, "from a pool thread")

execution._quiet_closed_pipes()  # what stop_workers does first
execution._quiet_closed_pipes()  # twice: still one hook
for code in (errno.EBADF, errno.EIO):
    thread = threading.Thread(target=fail, args=(code,), name="QueueFeederThread")
    thread.start()
    thread.join()
"""


def test_a_stop_drops_only_the_pools_closed_pipe_errors() -> None:
    # terminating a pool's workers races with its queue feeder thread (a CPython race):
    # its EBADF must not print a traceback after the one-line stop message; any other
    # error of a thread still does
    done = subprocess.run(
        [sys.executable, "-c", _PIPES], capture_output=True, text=True, check=True, timeout=60
    )
    assert "Errno 9" not in done.stderr, done.stderr
    assert "[Errno 5] from a pool thread" in done.stderr, done.stderr
