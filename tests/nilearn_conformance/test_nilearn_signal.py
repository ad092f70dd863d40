"""nilearn's own ``nilearn/tests/test_signal.py`` run against ``bids_spheres.signal``.

How
---
The installed nilearn's test module (the ``test`` extra: nilearn 0.14.1) is
loaded from its file as a new module (``importlib``; nilearn's own module and
``nilearn.signal`` are left untouched). The public names it imported from
``nilearn.signal`` are then bound to ours (:data:`SWAPPED`), so its test
functions, assertions untouched, call our functions; they and its fixtures are
re-exported here for pytest to collect. Its data files (confound files, SPM's
cosine basis) are read from nilearn's install, as nilearn's tests do.

Left out (:data:`EXCLUDED`): the tests of nilearn's private helpers
(underscore names, not API of nilearn.signal nor of ours); what they check of
``clean()`` is checked through ``clean()`` in tests/masker/test_signal.py and
tests/masker/test_signal_api.py (named in each reason).
Tests that still fail against ours are listed in the known-differences file
(section "signal"), each with its reason.

Rerun: ``python -m pytest tests/nilearn_conformance/test_nilearn_signal.py``
(``BIDS_SPHERES_CONFORMANCE_TARGET=nilearn``: the same tests against nilearn
itself, nothing swapped). The module needs only nilearn's test files, not the
folder's conftest (it imports nilearn's ``rng`` fixture itself).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import nilearn
import nilearn.signal
from nilearn.conftest import rng  # noqa: F401 (the one nilearn fixture these tests use)

from bids_spheres import signal as ours

NILEARN_TESTS = Path(nilearn.__file__).parent / "tests" / "test_signal.py"

#: nilearn.signal's public names that nilearn's tests import, bound to ours.
SWAPPED = (
    "butterworth",
    "clean",
    "create_cosine_drift",
    "high_variance_confounds",
    "row_sum_of_squares",
    "standardize_signal",
)

#: nilearn's tests left out, and why.
EXCLUDED = {
    "test_detrend": "nilearn's private _detrend(signals, inplace=, type=)",
    "test_mean_of_squares": "nilearn's private _mean_of_squares",
    "test_handle_scrubbed_volumes": "nilearn's private _handle_scrubbed_volumes "
    "(through clean(): test_signal.py::test_every_censored_volume_is_interpolated)",
    "test_handle_scrubbed_volumes_with_extrapolation": "nilearn's private "
    "_handle_scrubbed_volumes (extrapolate=True through clean(): "
    "test_signal_api.py::test_extrapolate_keeps_censored_edges)",
    "test_handle_scrubbed_volumes_without_extrapolation": "nilearn's private "
    "_handle_scrubbed_volumes and _censor_signals (through clean(): "
    "test_signal.py::test_censored_edges_are_dropped_not_extrapolated)",
    "test_handle_scrubbed_volumes_exception": "nilearn's private _handle_scrubbed_volumes "
    "(an empty sample_mask through clean(): test_signal.py::test_errors)",
    "test_create_cosine_drift_terms": "nilearn's private _create_cosine_drift_terms "
    "(through clean(): test_signal_api.py::test_cosine_filter_regresses_drift_terms, "
    "test_signal_api.py::test_cosine_filter_warnings)",
}


#: nilearn's fixtures defined in its test module.
FIXTURES = (
    "confounds",
    "data_butterworth_multiple_timeseries",
    "data_butterworth_single_timeseries",
    "signals",
)


def against_nilearn() -> bool:
    """True when the run is against nilearn itself (as in _nilearn_adapter.py)."""
    return os.environ.get("BIDS_SPHERES_CONFORMANCE_TARGET", "ours") == "nilearn"


def _load_against_ours() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "nilearn_test_signal__vs_bids_spheres", NILEARN_TESTS
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in SWAPPED:
        assert hasattr(module, name), f"nilearn's test_signal no longer imports {name}"
        if not against_nilearn():
            setattr(module, name, getattr(ours, name))
    return module


_nilearn_tests = _load_against_ours()
for _name in FIXTURES:
    globals()[_name] = getattr(_nilearn_tests, _name)
for _name, _obj in vars(_nilearn_tests).items():
    if _name.startswith("test_") and callable(_obj) and _name not in EXCLUDED:
        globals()[_name] = _obj


def test_exclusions_are_nilearn_tests() -> None:
    """Every excluded name is a test of nilearn's module (no stale exclusion), 44 run."""
    names = {n for n in vars(_nilearn_tests) if n.startswith("test_")}
    assert set(EXCLUDED) <= names
    assert len(names - set(EXCLUDED)) == 44
    swapped = {name: getattr(_nilearn_tests, name) for name in SWAPPED}
    expected = nilearn.signal if against_nilearn() else ours
    assert all(func is getattr(expected, name) for name, func in swapped.items())
