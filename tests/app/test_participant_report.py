"""Per-participant QC reports (issue 15): OUTPUT/sub-<label>.html after the participant level."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_participant
from test_group import _chromium_flags, _load_in_chromium, _references

from bids_spheres.app.cli import main
from bids_spheres.app.report import participant
from bids_spheres.masker import NiftiSpheresMasker, reading

SPACE = "MNI152NLin2009cAsym"


def _sidecars(out: Path, sub: str) -> list[Path]:
    return sorted((out / f"sub-{sub}").glob("**/func/*_timeseries.json"))


def test_report_per_participant_with_every_section(demo_one_run, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_participant(demo_one_run.root, out) == 0
    for sub in demo_one_run.subjects:
        page = (out / f"sub-{sub}.html").read_text(encoding="utf-8")
        [sidecar] = _sidecars(out, sub)
        meta = json.loads(sidecar.read_text())
        anchor = sidecar.name.removesuffix("_timeseries.json")
        carpet = out / f"sub-{sub}" / "figures" / f"{anchor}_carpet.svg"
        assert carpet.is_file()
        assert carpet.read_text() in page  # the worker's carpet, inline
        for heading in ("Motion", "Carpet", "Seeds on the participant's brain", "Connectome"):
            assert f"<h3>{heading}</h3>" in page
        assert f"<tr><th>Kept volumes</th><td>{len(meta['KeptVolumes'])}</td></tr>" in page
        columns = meta["Denoising"]["columns"]
        assert f"Confound columns regressed ({len(columns)})" in page
        assert all(f"<code>{c}</code>" in page for c in columns)
        assert "non-steady-state (2)" in page  # the demo's two dummy volumes
        assert "Methods text for this run" in page and "Sphere (seed) timeseries" in page
        assert "Per-seed coverage and tSNR (8 seeds)" in page
        # self-contained: every reference is a data: URI or an anchor in the page
        refs = _references(page)
        assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs), refs
        assert "<script" not in page
    # the figures are hidden from the BIDS validator with the report pages
    ignored = (out / ".bidsignore").read_text().splitlines()
    assert "figures" in ignored and "sub-*.html" in ignored


def test_carpet_voxels_come_from_the_one_streaming_pass(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, (16, 16, 16, 40)).astype(np.float32)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    passes = []
    reduce = reading.VolumeSource.reduce

    def counted(self, *args, **kwargs):
        passes.append(1)
        return reduce(self, *args, **kwargs)

    monkeypatch.setattr(reading.VolumeSource, "reduce", counted)
    masker = NiftiSpheresMasker([(8, 8, 8), (20, 20, 16)], radius=4.0, detrend=True).fit()
    got = masker.extract(path, sample_mask=np.arange(2, 40), voxel_signals=1000)
    assert len(passes) == 1  # sphere means and single voxels: one read of the file
    assert got.voxel_raw.shape == (40, got.voxel_seeds.size)
    assert got.voxel_signals.shape == (38, got.voxel_seeds.size)  # cleaned like the means
    plain = masker.transform(path, sample_mask=np.arange(2, 40))
    np.testing.assert_allclose(got.signals, plain, rtol=1e-6)
    for seed in (0, 1):  # all voxels picked: their mean is the sphere mean
        mine = got.voxel_seeds == seed
        assert mine.sum() == got.sizes[seed]
        np.testing.assert_allclose(got.voxel_raw[:, mine].mean(axis=1), got.raw[:, seed])
    few = masker.extract(path, voxel_signals=6)
    assert np.bincount(few.voxel_seeds).tolist() == [3, 3]  # an equal share per seed


def test_background_is_the_t1w_then_the_boldref_then_the_run(demo_small, copy_demo, tmp_path):
    data = copy_demo(demo_small, tmp_path / "ds")
    [bold] = data.bold_files
    root = data.fmriprep_dir
    boldref = bold.parent / bold.name.replace("_desc-preproc_bold.nii.gz", "_boldref.nii.gz")
    assert boldref.is_file()
    found, label = participant.find_background(bold, root, SPACE)
    assert found == boldref and label.startswith("the run's reference volume")
    out = tmp_path / "out"
    assert run_participant(data.root, out) == 0
    sub = data.subjects[0]
    page = (out / f"sub-{sub}.html").read_text()
    assert f"background: the run&#x27;s reference volume {boldref.name}" in page

    # an fMRIPrep T1w in the run's space comes first (another space's does not count)
    anat = root / f"sub-{sub}" / "anat"
    t1w = anat / f"sub-{sub}_space-{SPACE}_desc-preproc_T1w.nii.gz"
    img = nib.load(boldref)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 3, img.affine), t1w)
    nib.save(img, anat / f"sub-{sub}_space-MNI152NLin6Asym_desc-preproc_T1w.nii.gz")
    assert participant.find_background(bold, root, SPACE) == (
        t1w,
        f"the participant's T1w {t1w.name}",
    )
    before = (out / f"sub-{sub}.html").stat().st_mtime_ns
    assert run_participant(data.root, out) == 0  # a new background: the page is redone
    page = (out / f"sub-{sub}.html").read_text()
    assert (out / f"sub-{sub}.html").stat().st_mtime_ns != before
    assert f"background: the participant&#x27;s T1w {t1w.name}" in page
    assert participant.dataset_background([root], SPACE)[0] == t1w  # the group's rule

    t1w.unlink()
    boldref.unlink()
    found, label = participant.find_background(bold, root, SPACE)
    assert found == bold and label == f"the mean of the first volumes of {bold.name}"
    assert participant.dataset_background([root], SPACE) is None


def test_no_reports_writes_none(demo_small, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_participant(demo_small.root, out, "--no-reports") == 0
    assert not list(out.glob("sub-*.html"))
    assert not list(out.glob("sub-*/figures"))
    assert _sidecars(out, demo_small.subjects[0])  # the run itself is written


def test_reports_resume_like_the_runs(demo_dataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first, second = demo_dataset.subjects[:2]
    pages = {sub: out / f"sub-{sub}.html" for sub in (first, second)}

    def stamps() -> dict[str, int]:
        return {sub: p.stat().st_mtime_ns for sub, p in pages.items()}

    def runs_shown(sub: str) -> int:
        return len(re.findall(r"<h2 id='sub-", pages[sub].read_text()))

    assert run_participant(demo_dataset.root, out, "--run", "1") == 0
    assert runs_shown(first) == runs_shown(second) == 1
    before = stamps()
    assert run_participant(demo_dataset.root, out, "--run", "1") == 0  # nothing new
    assert stamps() == before
    # a new run of the first participant: its page is redone, the other's not touched
    assert run_participant(demo_dataset.root, out, "--participant-label", first) == 0
    after = stamps()
    assert after[first] != before[first] and runs_shown(first) == 2
    assert after[second] == before[second]
    # both in the job, only the second has a new run
    assert run_participant(demo_dataset.root, out) == 0
    last = stamps()
    assert last[first] == after[first]
    assert last[second] != after[second] and runs_shown(second) == 2
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_run_without_carpet_says_so(demo_small, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_participant(demo_small.root, out, "--no-reports") == 0
    assert run_participant(demo_small.root, out) == 0  # finished runs: no new carpet
    page = (out / f"sub-{demo_small.subjects[0]}.html").read_text()
    assert "No carpet: the run was processed with --no-reports" in page


def _chromium() -> str:
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        message = "chromium is not installed (CI installs it: apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium


def test_browser_loads_participant_and_group_reports_offline(demo_one_run, tmp_path: Path):
    import subprocess

    chromium = _chromium()
    out = tmp_path / "out"
    assert run_participant(demo_one_run.root, out) == 0
    assert main([str(demo_one_run.root), str(out), "group", "-w", str(tmp_path / "w")]) == 0
    group_page = out / "group" / "report.html"
    text = group_page.read_text()
    assert "outline of the MNI152 brain" not in text  # the dataset's own brain instead
    assert re.search(r"drawn on the reference volume sub-\w+_.*_boldref\.nii\.gz", text)
    pages = [out / f"sub-{sub}.html" for sub in demo_one_run.subjects] + [group_page]
    for k, page in enumerate(pages):
        dom, console, requested = _load_in_chromium(chromium, page, tmp_path / f"load{k}")
        assert not console, console
        assert not requested, requested
        assert dom.count("<svg") >= 4 or "group report" in dom
    shots = os.environ.get("BIDS_SPHERES_SCREENSHOTS")  # where to keep them, if anywhere
    for page in (pages[0], group_page):
        shot = tmp_path / f"{page.stem}.png"
        done = subprocess.run(
            [*_chromium_flags(chromium, tmp_path / f"shot-{page.stem}"),
             f"--screenshot={shot}", "--window-size=1100,4200", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
        from PIL import Image

        pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
        assert pixels.std() > 20 and (pixels < 100).mean() > 0.01  # drawn, not blank
        if shots:
            name = "group-report" if page.parent.name == "group" else f"participant-{page.stem}"
            shutil.copy(shot, Path(shots) / f"15-{name}.png")
