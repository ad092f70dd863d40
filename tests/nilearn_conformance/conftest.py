"""Harness for nilearn's own tests run against our classes (see _nilearn_adapter.py).

* nilearn's shared fixtures (``nilearn/conftest.py`` and
  ``nilearn/maskers/tests/conftest.py``, both shipped in nilearn's wheel) are
  made available to every module of this folder, as nilearn's test suite has them;
* every test of this folder runs with nilearn's estimator checks looking for our
  class (:func:`_nilearn_adapter.swap_in_checks`);
* from ``test_html_report.py`` only the tests of the sphere masker are collected;
* scikit-learn's array-API check (``check_array_api_input``, which
  ``sklearn.utils.estimator_checks`` yields for every estimator) is not collected:
  see :data:`NOT_COLLECTED`;
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
MASKER_MODULE = "test_nilearn_spheres_masker.py"

#: scikit-learn checks left out of collection: check -> (reason, how many the masker
#: module yields). Collected, they would only be skipped: scikit-learn skips them itself
#: unless SCIPY_ARRAY_API is set, which must be set before scipy is imported and changes
#: scipy for the whole session. With SCIPY_ARRAY_API=1 they fail for nilearn's own class
#: as for ours (a numpy array given as X: "input should be a NiftiLike object"): array-API
#: dispatch is not part of nilearn's masker API nor of ours. Nilearn's own test run skips
#: them too. The count is checked, so a change in what scikit-learn yields is seen.
NOT_COLLECTED: dict[str, tuple[str, int]] = {
    "check_array_api_input": (
        "scikit-learn's array-API dispatch check: numpy arrays as X, not applicable to an "
        "image masker; skipped by scikit-learn without SCIPY_ARRAY_API",
        2,  # one per estimator nilearn's module checks
    ),
}
_SKLEARN_CHECK = re.compile(r"-(check_\w+)\(")


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


def _not_collected(item: pytest.Item) -> str | None:
    """The :data:`NOT_COLLECTED` check ``item`` runs, else None."""
    match = _SKLEARN_CHECK.search(item.nodeid)
    return match[1] if match and match[1] in NOT_COLLECTED else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    left_out: dict[str, int] = dict.fromkeys(NOT_COLLECTED, 0)
    for item in items:
        in_report = item.nodeid.split("::")[0].endswith(REPORT_MODULE)
        check = _not_collected(item)
        if check is not None:
            left_out[check] += 1
        drop = check is not None or (in_report and not _is_sphere_report_test(item))
        (dropped if drop else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    _check_left_out(config, [*kept, *dropped], left_out)
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


def _check_left_out(config: pytest.Config, items: list[pytest.Item], counts: dict) -> None:
    """Each :data:`NOT_COLLECTED` check was left out as many times as it says, when the
    masker module is collected whole."""
    if config.option.keyword or config.option.markexpr or any("::" in a for a in config.args):
        return
    if not any(item.nodeid.split("::")[0].endswith(MASKER_MODULE) for item in items):
        return
    expected = {check: count for check, (_, count) in NOT_COLLECTED.items()}
    if counts != expected:
        raise pytest.UsageError(
            f"NOT_COLLECTED in conftest.py expects {expected} items, found {counts}"
        )


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
