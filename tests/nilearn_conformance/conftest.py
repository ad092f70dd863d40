"""Harness for nilearn's own tests run against our classes (see _nilearn_adapter.py).

* nilearn's shared fixtures (``nilearn/conftest.py`` and
  ``nilearn/maskers/tests/conftest.py``, both shipped in nilearn's wheel) are
  made available to every module of this folder, as nilearn's test suite has them;
* every test of this folder runs with nilearn's estimator checks looking for our
  class (:func:`_nilearn_adapter.swap_in_checks`);
* from ``test_html_report.py`` only the tests of the sphere masker are collected;
* the tests listed in ``known_differences.py`` are marked ``xfail(strict=True)``:
  each is a deliberate, documented difference, and one that starts to pass fails
  the run, so the list cannot go stale.
"""

from __future__ import annotations

import re

import pytest

try:  # nilearn's matplotlib backend, as its pytest_configure sets it
    import matplotlib

    matplotlib.use("Agg", force=True)
except ImportError:  # pragma: no cover
    pass

from _nilearn_adapter import against_nilearn, swap_in_checks
from known_differences import KNOWN_DIFFERENCES
from nilearn.conftest import *  # noqa: F403 (nilearn's fixtures, for nilearn's tests)
from nilearn.maskers.tests.conftest import *  # noqa: F403

REPORT_MODULE = "test_nilearn_spheres_report.py"


@pytest.fixture(autouse=True)
def _checks_see_our_masker():
    with swap_in_checks():
        yield


def _is_sphere_report_test(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    masker_class = callspec.params.get("masker_class") if callspec else None
    if masker_class is not None:
        return getattr(masker_class, "__name__", "") == "NiftiSpheresMasker"
    return "spheres" in item.originalname


def _local_id(item: pytest.Item) -> str:
    """The node id under tests/nilearn_conformance/, nilearn's checks named by check alone.

    ``test_check_estimator_nilearn[estimator52-check_x-check_x]`` becomes
    ``test_check_estimator_nilearn[check_x]``: one entry covers the check on both
    estimators nilearn's module builds (its numbering is positional).
    """
    local = item.nodeid.split("nilearn_conformance/", 1)[-1]
    return re.sub(r"\[estimator\d+-(\w+)-\1\]$", r"[\1]", local)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        in_report = item.nodeid.split("::")[0].endswith(REPORT_MODULE)
        (dropped if in_report and not _is_sphere_report_test(item) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    if against_nilearn():
        return
    seen = set()
    for item in items:
        known = KNOWN_DIFFERENCES.get(_local_id(item))
        if known is not None:
            seen.add(_local_id(item))
            reason, ours = known
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"{reason} (ours: {ours})"))
    _refuse_stale_entries(config, items, seen)


def _refuse_stale_entries(config: pytest.Config, items: list[pytest.Item], seen: set) -> None:
    """An entry naming no test of a module collected whole is an error (a typo, or a test
    nilearn renamed), so the list cannot silently cover less than it says."""
    if config.option.keyword or config.option.markexpr or any("::" in a for a in config.args):
        return
    modules = {_local_id(item).split("::")[0] for item in items}
    stale = sorted(k for k in KNOWN_DIFFERENCES if k.split("::")[0] in modules and k not in seen)
    if stale:
        raise pytest.UsageError(f"known_differences.py names no collected test: {stale}")


def pytest_configure(config: pytest.Config) -> None:
    """The markers nilearn's test modules use (pytest-rerunfailures' ``flaky`` included)."""
    for line in (
        "thread_unsafe: nilearn's marker for tests not to run in parallel threads",
        "flaky: pytest-rerunfailures' marker (nilearn uses it on Windows only)",
    ):
        config.addinivalue_line("markers", line)
