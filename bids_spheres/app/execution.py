"""Where runs are computed: inline, in a local process pool, or on a Dask cluster.

Promise
-------
:func:`execute` yields one :class:`~bids_spheres.app.run.RunResult` per task,
as runs finish, whatever runs them: inline (``nprocs`` 1 or a single run), a
:class:`~concurrent.futures.ProcessPoolExecutor` of ``nprocs`` workers, or an
existing ``distributed`` scheduler. Each worker calls the same
:func:`~bids_spheres.app.run.process_run`. At most ``_WINDOW`` runs per worker
are in flight, so the coordinating process holds a bounded number of futures.
A worker that dies becomes a ``failed`` result, never an exception. Progress
is a tqdm bar on a terminal, else one log line per finished run.
:func:`summarize` counts the results, prints the failed runs on stderr and
returns the exit code (0, or 1 when some run failed). :func:`in_child` runs one
call in a short-lived child process (inline where multiprocessing is missing).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from bids_spheres.app.run import RunResult, RunTask, process_run
from bids_spheres.errors import UsageError, one_line

__all__ = ["execute", "in_child", "summarize"]

log = logging.getLogger("bids_spheres")

_WINDOW = 4
_T = TypeVar("_T")


def execute(
    tasks: list[RunTask], nprocs: int, dask_scheduler: str | None = None
) -> Iterator[RunResult]:
    """Yield one RunResult per task as runs finish: inline, in a process pool, or on Dask.

    At most ``_WINDOW`` runs per worker are in flight at once, so the
    coordinating process holds a bounded number of futures whatever the
    number of runs.
    """
    progress = _progress(len(tasks))
    try:
        if dask_scheduler:
            yield from _execute_dask(tasks, dask_scheduler, progress)
        elif nprocs <= 1 or len(tasks) <= 1:
            for task in tasks:
                result = process_run(task)
                progress.update(1)
                yield result
        else:
            with ProcessPoolExecutor(max_workers=nprocs) as pool:
                yield from _windowed(
                    tasks, lambda t: pool.submit(process_run, t), nprocs, progress
                )
    finally:
        progress.close()


def summarize(results: Iterable[RunResult]) -> int:
    """Count results as they stream in; keep only the failed ones; return the exit code."""
    counts: dict[str, int] = {}
    failed: list[RunResult] = []
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status == "failed":
            failed.append(r)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    log.info("done: %s", summary)
    for r in failed:
        print(f"bids_spheres: run failed: {r.label}: {r.reason}", file=sys.stderr)
    if counts and not failed and not counts.get("written") and not counts.get("finished"):
        print(
            f"bids_spheres: no run written: all {sum(counts.values())} selected run(s) were "
            "skipped (see the warnings above)",
            file=sys.stderr,
        )
        return 1
    return 1 if failed else 0


def in_child(function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in a short-lived child process, inline without multiprocessing."""
    try:
        pool = ProcessPoolExecutor(max_workers=1)
    except (OSError, NotImplementedError, ImportError):  # no working multiprocessing here
        return function(*args)
    with pool:
        return pool.submit(function, *args).result()


# --------------------------------------------------------------------------
# private helpers


def _windowed(
    tasks: list[RunTask], submit: Any, n_workers: int, progress: Any
) -> Iterator[RunResult]:
    from concurrent.futures import FIRST_COMPLETED, wait

    pending: dict[Any, RunTask] = {}
    queue = iter(tasks)
    limit = max(1, n_workers) * _WINDOW
    for task in queue:
        pending[submit(task)] = task
        if len(pending) >= limit:
            break
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            task = pending.pop(future)
            yield _result_of(future, task)
            progress.update(1)
            nxt = next(queue, None)
            if nxt is not None:
                pending[submit(nxt)] = nxt


DASK_CONNECT_TIMEOUT_S = 10.0
"""Longest wait for the Dask scheduler to answer (s): a scheduler that is up answers
in milliseconds, even across a cluster; an unroutable address fails this fast."""


def _execute_dask(tasks: list[RunTask], address: str, progress: Any) -> Iterator[RunResult]:
    """Submit one task per run to an existing ``distributed`` cluster.

    The same :func:`process_run` as the local pool runs on the workers. A run
    on a worker that dies is rescheduled by the scheduler on another worker
    (``retries`` covers errors raised while it runs); outputs are atomic and
    idempotent, so a run computed twice writes identical files.
    """
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise UsageError(
            "--dask-scheduler needs the 'distributed' package: pip install 'bids_spheres[dask]'"
        ) from exc
    import dask
    from dask.utils import parse_timedelta

    # dask's connect timeout (30 s by default), but at most DASK_CONNECT_TIMEOUT_S
    configured = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    try:
        client = Client(address, timeout=min(configured, DASK_CONNECT_TIMEOUT_S))
    except (OSError, TimeoutError, ValueError, MemoryError) as exc:
        # ValueError: an address distributed cannot parse; MemoryError: a peer that is
        # not a Dask scheduler, whose reply distributed reads as a huge frame length
        raise UsageError(
            f"cannot connect to the Dask scheduler at {address} ({one_line(exc)}); check "
            "the address and that the scheduler is running"
        ) from exc
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        queue = iter(tasks)
        owner: dict[str, RunTask] = {}

        def submit(task: RunTask) -> Any:
            future = client.submit(process_run, task, pure=False, retries=2)
            owner[future.key] = task
            return future

        first = [submit(t) for _, t in zip(range(n_workers * _WINDOW), queue, strict=False)]
        stream = as_completed(first)
        for future in stream:
            task = owner.pop(future.key)
            yield _result_of(future, task)
            future.release()
            progress.update(1)
            nxt = next(queue, None)
            if nxt is not None:
                stream.add(submit(nxt))
    finally:
        client.close()


def _result_of(future: Any, task: RunTask) -> RunResult:
    try:
        return future.result()
    except Exception as exc:  # a worker died (killed, out of memory) too often
        log.error("FAILED %s: %s", task.run.bold.name, one_line(exc))
        return RunResult(str(task.run.bold), "failed", one_line(exc))


class _PlainProgress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def update(self, n: int) -> None:
        self.done += n
        log.info("progress: %d/%d runs", self.done, self.total)

    def close(self) -> None:
        return None


def _progress(total: int) -> Any:
    if sys.stderr.isatty() and total > 1:
        from tqdm import tqdm

        return tqdm(total=total, unit="run", desc="bids_spheres", file=sys.stderr)
    return _PlainProgress(total)
