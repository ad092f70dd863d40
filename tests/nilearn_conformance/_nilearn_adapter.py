"""The one adapter between nilearn's own tests and our classes.

Promise
-------
:func:`load_against_ours` executes a test module of the installed nilearn (the
``test`` extra pins the version) as a NEW module object, with the class names it
imports swapped for ours: while the module runs its imports,
``nilearn.maskers.NiftiSpheresMasker`` is our
:class:`bids_spheres.NiftiSpheresMasker`, so ``from nilearn.maskers import
NiftiSpheresMasker`` binds ours in that module's namespace; nilearn's own module
and ``nilearn.maskers`` are restored afterwards. Test functions, parametrizations
and assertions are nilearn's, untouched.

nilearn's estimator checks (``nilearn/_utils/estimator_checks.py``) choose what
to test by ``isinstance(estimator, NiftiSpheresMasker)``; :func:`swap_in_checks`
binds that module-level name to our class for the duration of one test (the
conftest of this folder does it for every test here).

Set ``BIDS_SPHERES_CONFORMANCE_TARGET=nilearn`` to run the same harness against
nilearn's own class (nothing swapped): the reference pass counts.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

from bids_spheres.masker import NiftiSpheresMasker

#: (module, attribute) pairs that name nilearn's masker, bound to ours.
MASKER_NAMES = (("nilearn.maskers", "NiftiSpheresMasker"),)
CHECKS_MODULE = "nilearn._utils.estimator_checks"


def against_nilearn() -> bool:
    """True when the harness runs against nilearn itself (the reference)."""
    return os.environ.get("BIDS_SPHERES_CONFORMANCE_TARGET", "ours") == "nilearn"


@contextlib.contextmanager
def _bound(module: ModuleType, name: str, value: object) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def load_against_ours(module_name: str) -> ModuleType:
    """nilearn's test module ``module_name``, run as a fresh module with our masker.

    The new module is named ``<module_name>__vs_bids_spheres`` and is not put in
    ``sys.modules``; nilearn's own module (if imported) is unchanged.
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ImportError(f"nilearn's test module {module_name} is not installed")
    # its imports (estimator_checks included) are done first, with nilearn's classes
    importlib.import_module(CHECKS_MODULE)
    new_spec = importlib.util.spec_from_file_location(
        f"{module_name}__vs_bids_spheres", spec.origin
    )
    module = importlib.util.module_from_spec(new_spec)
    with contextlib.ExitStack() as stack:
        if not against_nilearn():
            for owner, attr in MASKER_NAMES:
                stack.enter_context(
                    _bound(importlib.import_module(owner), attr, NiftiSpheresMasker)
                )
        # the checks' generators run while the module executes (its parametrization)
        stack.enter_context(swap_in_checks())
        new_spec.loader.exec_module(module)
    return module


def swap_in_checks() -> contextlib.AbstractContextManager[None]:
    """Bind ``NiftiSpheresMasker`` in nilearn's estimator checks to ours (a context)."""
    if against_nilearn():
        return contextlib.nullcontext()
    return _bound(importlib.import_module(CHECKS_MODULE), "NiftiSpheresMasker", NiftiSpheresMasker)


def export_tests(
    module: ModuleType, namespace: dict, exclude: frozenset[str] = frozenset()
) -> None:
    """Put ``module``'s test functions and fixtures into ``namespace`` for pytest to collect."""
    for name, obj in vars(module).items():
        if name in exclude:
            continue
        if name.startswith("test_") and callable(obj):
            namespace[name] = obj
        elif type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(
            obj, "_pytestfixturefunction"
        ):
            namespace[name] = obj
