"""nilearn's ``nilearn/maskers/tests/test_nifti_spheres_masker.py`` against our masker.

Its tests (the scikit-learn and nilearn estimator checks it applies from
``nilearn/_utils/estimator_checks.py`` included) run, assertions untouched,
with ``NiftiSpheresMasker`` bound to :class:`bids_spheres.NiftiSpheresMasker`
through :mod:`_nilearn_adapter`. Those that still fail are listed, with their
reason, in ``known_differences.py``.

Rerun: ``python -m pytest tests/nilearn_conformance/test_nilearn_spheres_masker.py``.
"""

from __future__ import annotations

from _nilearn_adapter import export_tests, load_against_ours

export_tests(load_against_ours("nilearn.maskers.tests.test_nifti_spheres_masker"), globals())
