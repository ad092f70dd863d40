"""Demo datasets shared by the whole test session.

Building a demo dataset (:func:`bids_spheres.app.demo.build_dataset`) takes
seconds, so each dataset a test needs only to *read* is built once per session:

``demo_dataset``
    The standard demo, ``build_dataset(root)``: fMRIPrep ``derivatives`` layout,
    2 subjects x 2 runs x 100 volumes, seed 0.
``demo_three_subjects``
    The same with 3 subjects (6 runs): several jobs and workers have work to share.
``demo_one_run``
    2 subjects x 1 run x 100 volumes: one output per subject.
``demo_small``
    1 subject x 1 run x 40 volumes: the smallest valid dataset.

**They are read-only.**  A test must not create, change, remove or chmod
anything inside a shared dataset; the pybids database belongs in the work
directory (``--work-dir``, ``make_layout(..., database_dir)``), never in the
input.  A test that has to modify its input takes a private, writable copy:
``demo_copy`` (the standard demo copied to ``tmp_path / "ds"``) or
``copy_demo(info, dest)`` for any shared dataset.  Copies are cheap: the
files are small and already compressed.

Enforcement: the write permission bits of every shared tree are removed, so a
write fails with ``PermissionError`` for an ordinary user; and because root
ignores permission bits, after each test that used a shared dataset its tree
is compared with the snapshot taken when it was built (names, modes, sizes,
modification times): any difference is an error of that test.

Tests that need a genuinely different dataset (another layout, sessions, a
different seed, ``build_dataset`` itself under test) still build their own.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bids_spheres.app.demo import DemoInfo, build_dataset

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH

Snapshot = dict[str, tuple[int, int, int]]

_SHARED: dict[str, tuple[Path, Snapshot]] = {}
"""Fixture name -> (dataset root, snapshot) of every shared dataset built so far."""


def _paths(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            yield Path(dirpath, name)


def _snapshot(root: Path) -> Snapshot:
    out = {}
    for path in _paths(root):
        st = path.lstat()
        out[path.relative_to(root).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _changes(before: Snapshot, after: Snapshot) -> list[str]:
    changes = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    changes += [f"changed {p}" for p in sorted(before) if p in after and after[p] != before[p]]
    return changes


def _set_writable(root: Path, writable: bool) -> None:
    for path in _paths(root):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~_WRITE_BITS)


def _shared(
    name: str, tmp_path_factory: pytest.TempPathFactory, **kwargs: object
) -> Iterator[DemoInfo]:
    info = build_dataset(tmp_path_factory.mktemp(name) / "ds", **kwargs)
    _set_writable(info.root, False)
    _SHARED[name] = (info.root, _snapshot(info.root))
    try:
        yield info
    finally:
        _, before = _SHARED.pop(name)
        changes = _changes(before, _snapshot(info.root))
        _set_writable(info.root, True)  # so that pytest can remove old temporary trees
        assert not changes, f"the shared {name} was modified: {changes[:5]}"


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoInfo]:
    """The standard demo (2 subjects x 2 runs x 100 volumes), shared and read-only."""
    yield from _shared("demo_dataset", tmp_path_factory)


@pytest.fixture(scope="session")
def demo_three_subjects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoInfo]:
    """3 subjects x 2 runs x 100 volumes, shared and read-only."""
    yield from _shared("demo_three_subjects", tmp_path_factory, n_subjects=3)


@pytest.fixture(scope="session")
def demo_one_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoInfo]:
    """2 subjects x 1 run x 100 volumes, shared and read-only."""
    yield from _shared("demo_one_run", tmp_path_factory, n_runs=1)


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoInfo]:
    """1 subject x 1 run x 40 volumes, shared and read-only."""
    yield from _shared("demo_small", tmp_path_factory, n_subjects=1, n_runs=1, n_volumes=40)


def _copy(info: DemoInfo, dest: Path) -> DemoInfo:
    """Copy a demo dataset to ``dest`` (created, with its parents), writable."""
    shutil.copytree(info.root, dest, symlinks=True)
    _set_writable(dest, True)

    def moved(path: Path) -> Path:
        return dest / path.relative_to(info.root)

    return dataclasses.replace(
        info,
        root=dest,
        fmriprep_dir=moved(info.fmriprep_dir),
        seeds_tsv=moved(info.seeds_tsv),
        bold_files=tuple(moved(p) for p in info.bold_files),
    )


@pytest.fixture
def copy_demo() -> Callable[[DemoInfo, Path], DemoInfo]:
    """``copy_demo(info, dest)``: a private, writable copy of a (shared) demo dataset."""
    return _copy


@pytest.fixture
def demo_copy(demo_dataset: DemoInfo, tmp_path: Path) -> DemoInfo:
    """A private, writable copy of the standard demo at ``tmp_path / "ds"``."""
    return _copy(demo_dataset, tmp_path / "ds")


@pytest.fixture(autouse=True)
def _one_run_at_a_time_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--nprocs`` defaults to the CPUs the process may use, capped by
    ``SLURM_CPUS_PER_TASK`` (issue 14): the tests cap it at 1, so that runs started
    without ``--nprocs`` stay inline, as the tests were written (their log lines reach
    ``capsys``); a test that wants workers passes ``--nprocs`` or sets the variable."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")


@pytest.fixture(autouse=True)
def _shared_demos_stay_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used a shared dataset: fail it if the dataset changed."""
    yield
    for name in request.fixturenames:
        if name not in _SHARED:
            continue
        root, before = _SHARED[name]
        after = _snapshot(root)
        changes = _changes(before, after)
        if changes:
            _SHARED[name] = (root, after)  # report it once, at the test that did it
            pytest.fail(
                f"{request.node.nodeid} modified the shared, read-only {name} at {root} "
                f"(use demo_copy or copy_demo): {changes[:5]}",
                pytrace=False,
            )
