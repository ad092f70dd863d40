"""The methods text (issue 14, item 4): logs/CITATION.md/.html/.bib from the parameters used.

Also the output dataset's README.md and the repository's LICENSE and CITATION.cff.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_participant

from bids_spheres.app import citation, confounds, dataset, provenance, seeds
from bids_spheres.app.config import RunConfig
from bids_spheres.app.demo import DemoInfo

REPO = Path(__file__).parents[2]


def _config(tmp_path: Path, **changes: object) -> RunConfig:
    return RunConfig(
        bids_dir=tmp_path / "ds",
        output_dir=tmp_path / "out",
        analysis_level="participant",
        work_dir=tmp_path / "work",
        **changes,
    )


def _bib_keys(bib: str) -> list[str]:
    return re.findall(r"^@\w+\{([^,]+),$", bib, flags=re.MULTILINE)


def test_methods_state_the_parameters_used(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        radius=6.0,
        high_pass=0.01,
        low_pass=0.08,
        denoise_strategy="scrubbing",
        fd_threshold=0.3,
        standardize="zscore_sample",
        min_coverage=0.75,
    )
    text = citation.methods(
        config,
        seeds.load("power2011"),
        confounds.load_strategy("scrubbing"),
        fmriprep_version="24.1.1",
        versions={**provenance.software_versions(), "numpy": "9.9.9"},
    )
    md = citation.render_markdown(text)
    flat = " ".join(md.split())
    for phrase in (
        "fMRIPrep 24.1.1",
        "264 seeds of the `power2011` seed set (Power et al., 2011)",
        "a sphere of radius 6 mm",
        "whose centre lies within the radius of the seed (inclusive), plus the voxel nearest",
        "less than 75% of its voxels",
        "`scrubbing` strategy",
        "24 motion terms",
        "8 white-matter and CSF terms",
        "`framewise_displacement` column",
        "`std_dvars` column",
        "FD > 0.3 mm or standardized DVARS > 1.5",  # --fd-threshold wins, DVARS from strategy
        "kept segments shorter than 5 volumes",
        "band-pass (0.01-0.08 Hz) filtered with a Butterworth filter of order 5",
        "the confounds were filtered too",
        "linearly detrended",
        "z-scored (mean 0, sample standard deviation 1)",
        "NumPy 9.9.9",
    ):
        assert phrase in flat, phrase
    steps = ("detrended", "Butterworth", "regressed out", "each timeseries was z-scored")
    order = [flat.index(step) for step in steps]
    assert order == sorted(order)
    bib = citation.render_bibtex(text)
    keys = _bib_keys(bib)
    assert keys == list(text.references)
    for key in ("power2011", "power2014", "power2012", "esteban2019", "harris2020"):
        assert key in keys
    assert "doi = {10.1016/j.neuron.2011.09.006}" in bib  # from power2011.json's DOI
    assert "fox2005" not in keys  # the simple strategy was not used


def test_methods_without_filter_scrubbing_or_standardization(tmp_path: Path) -> None:
    config = _config(tmp_path, detrend=False, standardize=None, smoothing_fwhm=6.0)
    seed_set = seeds.load("seitzman2018")
    text = citation.methods(config, seed_set, confounds.load_strategy("simple"))
    flat = " ".join(citation.render_markdown(text).split())
    assert "No volume was censored for motion" in flat
    assert "no temporal filter" in flat
    assert "not standardized" in flat and "detrended" not in flat
    assert "radius 4 to 5 mm (per seed, from the seed file)" in flat
    assert "Gaussian kernel of 6 mm FWHM" in flat
    assert "(Fox et al., 2005)" not in flat or "fox2005" in text.references
    assert {"seitzman2020", "fox2005"} <= set(text.references)


def test_participant_level_writes_citation_files_and_readme(
    demo_small: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out, "--high-pass", "0.01") == 0
    md = (out / "logs" / "CITATION.md").read_text()
    page = (out / "logs" / "CITATION.html").read_text()
    bib = (out / "logs" / "CITATION.bib").read_text()
    assert "high-pass (0.01 Hz) filtered" in " ".join(md.split())
    assert "8 seeds of the `demoseeds` seed set" in md
    assert "<style>" in page and "high-pass (0.01 Hz) filtered" in page
    for external in ("<script", "<link", "src=", "url(", "@import", 'href="http'):
        assert external not in page  # self-contained
    assert len(_bib_keys(bib)) == md.split("## References", 1)[1].count("\n- ")
    readme = out / "README.md"
    assert "logs/CITATION.md" in readme.read_text()
    assert "logs" in (out / ".bidsignore").read_text().splitlines()
    readme.write_text("my notes\n")  # a user's README is kept on a rerun
    assert run_participant(data.root, out, "--high-pass", "0.02") == 0
    assert readme.read_text() == "my notes\n"
    assert "high-pass (0.02 Hz)" in (out / "logs" / "CITATION.md").read_text()


def test_repository_license_is_apache_2() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()


def test_repository_citation_cff_is_valid() -> None:
    cff = REPO / "CITATION.cff"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.citation-file-format",
            str(cff),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = cff.read_text()
    assert "cff-version: 1.2.0" in text
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version and f"version: {version[1]}" in text
    assert "license: Apache-2.0" in text


@pytest.mark.parametrize("name", ["power2011", "dosenbach2010", "seitzman2018"])
def test_builtin_seed_sets_cite_their_paper(name: str, tmp_path: Path) -> None:
    seed_set = seeds.load(name)
    text = citation.methods(_config(tmp_path), seed_set, confounds.load_strategy("none"))
    doi = re.search(r"doi:(10\.\S+)$", seed_set.citation)[1]
    assert any(entry.get("doi") == doi for entry in text.references.values())


def _flat(text: citation.Methods) -> str:
    return " ".join(citation.render_markdown(text).split())


def test_native_space_and_maps_are_described_only_when_used(tmp_path: Path) -> None:
    power, simple = seeds.load("power2011"), confounds.load_strategy("simple")
    nitransforms = importlib.metadata.version("nitransforms")
    plain = _flat(citation.methods(_config(tmp_path), power, simple))
    native = _flat(
        citation.methods(
            _config(tmp_path, space="T1w"), power, simple, native_template="MNI152NLin6Asym"
        )
    )
    for phrase in (
        "mapped into each subject's T1w space",
        "fMRIPrep's `from-T1w_to-MNI152NLin6Asym` ANTs composite transform",
        f"with nitransforms {nitransforms}",
        "with the same radii",
    ):
        assert phrase in native, phrase
    # the template chosen from the transforms present is named when known, else the rule
    generic = _flat(citation.methods(_config(tmp_path, space="T1w:res-native"), power, simple))
    assert "`from-T1w_to-<template>`" in generic and "MNI152NLin2009cAsym" in generic
    mapped = _flat(citation.methods(_config(tmp_path, maps=True), power, simple))
    for phrase in (
        "seed-to-voxel map",
        "Pearson correlation r of the seed's cleaned signal with the signal of every voxel "
        "of the brain mask",
        "cleaned identically",
        "Fisher z = arctanh(r)",
        "for every seed written",
    ):
        assert phrase in mapped, phrase
    chosen = _flat(
        citation.methods(_config(tmp_path, maps=True, map_seeds=("PCC", "LMotor")), power, simple)
    )
    assert "for the seeds `PCC`, `LMotor` (--map-seeds)" in chosen
    for phrase in ("nitransforms", "from-T1w_to-", "arctanh", "seed-to-voxel"):
        assert phrase not in plain, phrase
    assert "arctanh" not in native and "nitransforms" not in mapped


def test_dataset_readme_lists_the_maps_only_with_maps() -> None:
    assert "boldmap" not in dataset.dataset_readme()
    text = dataset.dataset_readme(maps=True)
    assert "_stat-r_desc-<strategy>_boldmap.nii.gz" in text
    assert "_stat-fisherz_desc-<strategy>_boldmap.nii.gz" in text
    assert "_stat-effect_desc-<strategy>_statmap.nii.gz" in text
    assert "_stat-t_desc-<strategy>_statmap.nii.gz" in text
