"""The sphere-masker tests of nilearn's ``nilearn/maskers/tests/test_html_report.py``.

Only the tests (and parametrizations) that build a ``NiftiSpheresMasker`` are
collected (the conftest of this folder deselects the other maskers'); they run
against :class:`bids_spheres.NiftiSpheresMasker` through :mod:`_nilearn_adapter`.

Rerun: ``python -m pytest tests/nilearn_conformance/test_nilearn_spheres_report.py``.
"""

from __future__ import annotations

from _nilearn_adapter import export_tests, load_against_ours

export_tests(load_against_ours("nilearn.maskers.tests.test_html_report"), globals())
