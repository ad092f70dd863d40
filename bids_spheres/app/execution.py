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
returns the exit code (0; 1 when some run failed, or when every run was skipped
and none written or finished). :func:`in_child` runs one
call in a short-lived child process (inline where multiprocessing is missing).

Faults that are not a run's: an :class:`~bids_spheres.errors.OutputError`
(disk full, quota, read-only file system) stops the job: no further run is
submitted, pending runs are cancelled, the counts so far are logged and the
error reaches the CLI (exit 73). A full disk under the pybids index built in
:func:`in_child` is an ``OutputError`` naming that directory.

No orphans: every worker and indexing child dies with the coordinating
process. The CLI turns SIGTERM/SIGHUP into :class:`~bids_spheres.errors.Terminated`
and calls :func:`stop_workers`, which terminates (then kills) every live
worker and waits for it; a worker that gets SIGTERM in the middle of a run
unwinds it (its temporary files are removed) and exits. On Linux each worker
also asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), and a watchdog thread in each worker exits it
when its parent process is gone, so a SIGKILLed coordinator leaves nothing.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from bids_spheres.app.run import RunResult, RunTask, process_run
from bids_spheres.errors import OutputError, Terminated, UsageError, one_line

__all__ = ["execute", "in_child", "stop_workers", "summarize"]

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
            with _pool(nprocs) as pool:
                yield from _windowed(
                    tasks, lambda t: pool.submit(_process_in_worker, t), nprocs, progress
                )
    finally:
        progress.close()


def summarize(results: Iterable[RunResult]) -> int:
    """Count results as they stream in; keep only the failed ones; return the exit code."""
    counts: dict[str, int] = {}
    failed: list[RunResult] = []
    try:
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
            if r.status == "failed":
                failed.append(r)
    except OutputError:
        done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no run"
        log.error("stopped, the outputs cannot be written: %s before the stop", done)
        raise
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


def in_child(function: Callable[..., _T], *args: Any, writes: Any = None) -> _T:
    """``function(*args)`` in a short-lived child process, inline without multiprocessing.

    ``writes`` names what the call writes (e.g. the pybids database directory):
    a disk full or read-only error there becomes an OutputError naming it.
    """
    try:
        pool = _pool(1)
    except (OSError, NotImplementedError, ImportError):  # no working multiprocessing here
        return _output_errors_named(function, writes, *args)
    with pool as executor:
        return executor.submit(_output_errors_named, function, writes, *args).result()


def stop_workers(timeout: float = 5.0) -> None:
    """Terminate every live worker and child of this process's pools, and wait for them.

    SIGTERM first (a worker in a run unwinds it, removing its temporary files),
    SIGKILL for any still alive after ``timeout`` seconds. Pending runs are
    cancelled. Safe to call more than once, and from a signal's unwinding.
    """
    pools = list(_LIVE_POOLS)
    if not pools:
        return
    _quiet_closed_pipes()
    # the pools' workers and the indexing child: this process's multiprocessing children
    # less those it had before its first live pool (a host application's own)
    foreign = set.intersection(*(pool.foreign for pool in pools))
    processes = [p for p in multiprocessing.active_children() if p.pid not in foreign]
    for pool in pools:
        pool.executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)
    _LIVE_POOLS.difference_update(pools)


# --------------------------------------------------------------------------
# private helpers


def _quiet_closed_pipes() -> None:
    """Once the workers are being stopped, drop EBADF from the pools' own threads.

    Terminating a ProcessPoolExecutor's workers races with the feeder thread of its
    call queue (multiprocessing.queues ``QueueFeederThread``), which may then write
    to or close a pipe already closed and print ``OSError: [Errno 9] Bad file
    descriptor`` after our one-line stop message (a known CPython race, e.g.
    python/cpython#84176; Python 3.14 adds ``terminate_workers``). Only that error,
    only in threads other than the main one, only from here on: anything else is
    reported by the previous hook.
    """
    previous = threading.excepthook
    if getattr(previous, "_bids_spheres_quiet", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if (
            isinstance(args.exc_value, OSError)
            and args.exc_value.errno == errno.EBADF
            and args.thread is not threading.main_thread()
        ):
            return
        previous(args)

    hook._bids_spheres_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


_LIVE_POOLS: set[_pool] = set()
_IS_WORKER = False  # this process is a pool worker or indexing child
_IN_RUN = False  # in a worker: a run is being processed (SIGTERM unwinds it)
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class _pool:
    """A ProcessPoolExecutor whose workers die with this process (see the module docstring).

    On leaving the ``with`` block by an exception (an OutputError, a signal, a
    closed generator) the workers are terminated instead of being waited for.
    """

    def __init__(self, n_workers: int) -> None:
        self.foreign = {p.pid for p in multiprocessing.active_children()}
        self.executor = ProcessPoolExecutor(
            max_workers=n_workers, initializer=_init_worker, initargs=(os.getpid(),)
        )
        _LIVE_POOLS.add(self)

    def __enter__(self) -> ProcessPoolExecutor:
        return self.executor

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.executor.shutdown(wait=True)
            _LIVE_POOLS.discard(self)
        else:
            stop_workers()


def _init_worker(parent_pid: int) -> None:
    """Worker initializer: die with the parent; SIGTERM unwinds the run in progress."""
    global _IS_WORKER
    _IS_WORKER = True
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.signal(signal.SIGHUP, _worker_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog below remains
            pass
    # The direct parent is the coordinator (start method "fork") or the forkserver
    # ("forkserver", the default from Python 3.14), which exits with the coordinator.
    parent = os.getppid()
    if not _alive(parent_pid):  # the coordinator died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent, parent_pid), daemon=True).start()


def _watch_parent(parent: int, coordinator: int) -> None:
    """In a worker: SIGTERM itself once its parent or the coordinator is gone."""
    import time

    while os.getppid() == parent and _alive(coordinator):
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _worker_signal(signum: int, frame: Any) -> None:
    if _IN_RUN:
        raise Terminated(signum)  # unwinds the run: its temporary files are removed
    os._exit(128 + signum)


def _process_in_worker(task: RunTask) -> RunResult:
    """:func:`process_run` in a pool worker; a SIGTERM during the run ends the worker."""
    global _IN_RUN
    _IN_RUN = True
    try:
        return process_run(task)
    except Terminated as exc:
        os._exit(exc.exit_code)
    finally:
        _IN_RUN = False


def _output_errors_named(function: Callable[..., _T], where: Any, *args: Any) -> _T:
    """``function(*args)``; a full disk or read-only file system becomes an OutputError."""
    global _IN_RUN
    _IN_RUN = True
    try:
        return function(*args)
    except OutputError:
        raise
    except Terminated as exc:
        if not _IS_WORKER:
            raise
        os._exit(exc.exit_code)
    except Exception as exc:
        reason = _full_disk_reason(exc)
        if reason is None:
            raise
        place = where or getattr(exc, "filename", None) or "the work directory"
        raise OutputError(
            f"cannot write {place}: {reason}; free space or raise the quota, or choose "
            "another --work-dir / --bids-database-dir"
        ) from None
    finally:
        _IN_RUN = False


_SQLITE_FULL, _SQLITE_READONLY = 13, 8


def _full_disk_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means the disk is full or read-only (SQLAlchemy/sqlite wrapped too), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_DISK:
            return current.strerror or os.strerror(current.errno)
        code = getattr(current, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL:
            return "disk full (sqlite: database or disk is full)"
        if code is not None and code & 0xFF == _SQLITE_READONLY:
            return "not writable (sqlite: attempt to write a readonly database)"
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            current = orig
        else:
            current = current.__cause__ or current.__context__
    return None


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
    except OutputError:  # the outputs cannot be written: not this run's fault
        raise
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
