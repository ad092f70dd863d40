"""nilearn tests that fail against ours on purpose: node id -> (reason, the test of ours).

Node ids are relative to tests/nilearn_conformance/. The conftest marks each of
them ``xfail(strict=True)``, so a difference that disappears fails the run.
Every entry is also explained in the README ("Where we deliberately differ").
"""

from __future__ import annotations

KNOWN_DIFFERENCES: dict[str, tuple[str, str]] = {
    # ---- masker (18a) ----
    "test_nilearn_spheres_masker.py::test_check_estimator_nilearn[check_doc_link]": (
        "nilearn's check wants a link to nilearn.github.io/.../nilearn.<module>."
        "NiftiSpheresMasker.html; ours is documented in bids_spheres' README, not there",
        "tests/masker/test_nilearn_api.py::test_documentation_is_ours_not_nilearns",
    ),
    "test_nilearn_spheres_masker.py::test_check_estimator_nilearn[check_masker_generate_report]": (
        "the report must be an instance of nilearn's class nilearn.reporting.HTMLReport; "
        "ours is bids_spheres.masker.report.HTMLReport (same interface, no nilearn needed)",
        "tests/masker/test_nilearn_api.py::test_report_is_self_contained_and_shows_the_seeds",
    ),
    "test_nilearn_spheres_masker.py::test_check_estimator_nilearn[check_masker_generate_report_false]": (  # noqa: E501
        "same as check_masker_generate_report: isinstance(report, nilearn's HTMLReport)",
        "tests/masker/test_nilearn_api.py::test_reports_false_makes_no_figure",
    ),
    "test_nilearn_spheres_masker.py::test_check_estimator_nilearn[check_nifti_masker_generate_report_after_fit_with_only_mask]": (  # noqa: E501
        "same as check_masker_generate_report: isinstance(report, nilearn's HTMLReport)",
        "tests/masker/test_nilearn_api.py::test_report_background_is_the_mean_image_then_the_mask",
    ),
    "test_nilearn_spheres_masker.py::test_check_estimator_nilearn[check_masker_joblib_cache]": (
        "joblib.hash(mask_img_) must not change when nilearn's private get_data() caches "
        "the array into the image (img._data_cache); nilearn's mask_img_ has that cache "
        "filled by its own loading, ours is a plain in-memory image and we use only "
        "nibabel's public API",
        "tests/masker/test_nilearn_api.py::test_mask_img_is_left_unchanged_and_the_cache_works",
    ),
    "test_nilearn_spheres_masker.py::test_check_estimator_nilearn[check_nifti_masker_fit_transform]": (  # noqa: E501
        "a 3D image gives a (1, n_seeds) array (one volume, 2D like every other output); "
        "nilearn 0.14 returns shape () or (n_seeds,)",
        "tests/masker/test_estimator.py::test_inputs_file_gz_list_and_3d",
    ),
    "test_nilearn_spheres_masker.py::test_check_estimator_nilearn[check_nifti_masker_fit_transform_5d]": (  # noqa: E501
        "a list of 4D images raises TypeError (the type nilearn's DimensionError derives "
        "from); pytest.raises wants nilearn's own DimensionError class",
        "tests/masker/test_nilearn_api.py::test_a_list_of_4d_runs_is_refused",
    ),
    "test_nilearn_spheres_masker.py::test_sphere_extraction": (
        "sphere means are sums over the sphere's voxels in on-disk (Fortran) order divided "
        "by the count; assert_array_equal with numpy's mean of data[mask] (C order) "
        "differs by 1 ulp (1e-16) for this 7-voxel cross",
        "tests/masker/test_nilearn_api.py::test_sphere_mean_is_numpys_mean_to_one_ulp",
    ),
    # ---- end masker ----
    # ---- signal (18b) ----
    # ---- end signal ----
}
