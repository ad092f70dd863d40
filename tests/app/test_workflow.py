"""End-to-end: ``main([...])`` on generated fMRIPrep-like datasets."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_spheres.app.cli import main
from bids_spheres.app.demo import DemoInfo, build_dataset


@pytest.fixture(scope="module")
def demo(demo_dataset: DemoInfo) -> DemoInfo:
    """The shared, read-only standard demo (tests/conftest.py); copy it to modify it."""
    return demo_dataset


@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo_raw") / "raw"
    return build_dataset(root, layout="raw+derivatives")


def _run(bids_dir: Path, out: Path, *extra: str, seeds: Path | None = None) -> int:
    args = [str(bids_dir), str(out), "participant", "--work-dir", str(out.parent / "work")]
    if seeds is not None:
        args += ["--seeds", str(seeds)]
    return main([*args, *extra])


def _timeseries(out: Path) -> list[Path]:
    return sorted(out.glob("sub-*/**/func/*_timeseries.tsv"))


def _tree(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def test_derivatives_layout_end_to_end(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = _tree(demo.root)
    assert _run(demo.root, out, seeds=demo.seeds_tsv) == 0
    assert _tree(demo.root) == before, "the input dataset was modified"

    files = _timeseries(out)
    assert [f.name for f in files] == [
        f"sub-{s}_task-rest_run-{r}_space-MNI152NLin2009cAsym_atlas-demoseeds_desc-simple_"
        "timeseries.tsv"
        for s in ("01", "02")
        for r in (1, 2)
    ]
    seeds = pd.read_csv(demo.seeds_tsv, sep="\t")
    for f in files:
        table = pd.read_csv(f, sep="\t")
        assert list(table.columns) == list(seeds["name"])
        assert len(table) == demo.n_volumes - demo.n_nonsteady
        np.testing.assert_allclose(table.std(ddof=1), 1.0, rtol=1e-5)  # zscore_sample
        sidecar = json.loads(f.with_suffix(".json").read_text())
        assert sidecar["SamplingFrequency"] == pytest.approx(1 / demo.t_r)
        assert sidecar["NumberOfVolumes"] == demo.n_volumes
        assert sidecar["NonSteadyStateVolumes"] == list(range(demo.n_nonsteady))
        assert sidecar["Denoising"]["strategy"]["name"] == "simple"
        assert set(sidecar["Seeds"]) == set(seeds["name"])
        for info in sidecar["Seeds"].values():
            assert info["VoxelCount"] > 0 and 0 < info["Coverage"] <= 1
        assert all(src.startswith("bids:fmriprep:sub-") for src in sidecar["Sources"])
        assert sidecar["CleaningParameters"]["standardize"] == "zscore_sample"
        assert "ParametersHash" in sidecar

        relmat = pd.read_csv(
            f.with_name(
                f.name.replace(
                    "_desc-simple_timeseries", "_meas-PearsonCorrelation_desc-simple_relmat"
                )
            ),
            sep="\t",
        )
        relmat.index = relmat.columns
        for a, b in demo.planted_pairs:
            assert relmat.loc[a, b] > 0.8, (f.name, a, b)
        independent = list(demo.independent_seeds)
        off = relmat.loc[independent, independent].to_numpy()[np.triu_indices(len(independent), 1)]
        assert np.abs(off).max() < 0.5

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert [g["Name"] for g in description["GeneratedBy"]] == ["bids_spheres", "fMRIPrep"]
    assert "*_timeseries.*" in (out / ".bidsignore").read_text()
    assert (out / "atlas-demoseeds_seeds.tsv").is_file()


def test_rerun_skips_and_overwrite_recomputes(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(demo.root, out, "--participant-label", "01", seeds=demo.seeds_tsv) == 0
    first = {f: f.stat().st_mtime_ns for f in _timeseries(out)}
    assert len(first) == 2
    assert _run(demo.root, out, "--participant-label", "01", seeds=demo.seeds_tsv) == 0
    assert {f: f.stat().st_mtime_ns for f in _timeseries(out)} == first
    assert (
        _run(demo.root, out, "--participant-label", "01", "--overwrite", seeds=demo.seeds_tsv) == 0
    )
    assert all(f.stat().st_mtime_ns > t for f, t in first.items())
    # a changed parameter is not "finished": recomputed without --overwrite
    assert (
        _run(
            demo.root,
            out,
            "--participant-label",
            "01",
            "--radius",
            "4",
            "--seeds",
            str(demo.seeds_tsv),
            "--no-detrend",
        )
        == 0
    )


def test_filters_and_filter_file(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        _run(demo.root, out, "--participant-label", "sub-02", "--run", "2", seeds=demo.seeds_tsv)
        == 0
    )
    assert [f.name[:20] for f in _timeseries(out)] == ["sub-02_task-rest_run"]
    assert "run-2" in _timeseries(out)[0].name

    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"bold": {"run": "1", "session": None}}))
    out2 = tmp_path / "out2"
    assert _run(demo.root, out2, "--bids-filter-file", str(filt), seeds=demo.seeds_tsv) == 0
    assert [("run-1" in f.name) for f in _timeseries(out2)] == [True, True]


def test_raw_with_derivatives_and_explicit_derivatives(demo_raw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(demo_raw.root, out, "--participant-label", "01", seeds=demo_raw.seeds_tsv) == 0
    assert len(_timeseries(out)) == 2
    # fMRIPrep outputs elsewhere, given with --derivatives
    moved = tmp_path / "elsewhere" / "fmriprep"
    raw = tmp_path / "rawcopy"
    shutil.copytree(demo_raw.root, raw)
    shutil.move(str(raw / "derivatives" / "fmriprep"), moved)
    out2 = tmp_path / "out2"
    assert (
        _run(
            raw,
            out2,
            "--participant-label",
            "01",
            "--derivatives",
            str(moved),
            seeds=raw / "code" / "demo_seeds.tsv",
        )
        == 0
    )
    assert len(_timeseries(out2)) == 2
    assert _run(raw, tmp_path / "out3", seeds=raw / "code" / "demo_seeds.tsv") == 66


def test_read_only_input_and_nothing_written_outside(demo, tmp_path: Path) -> None:
    data = tmp_path / "ro"
    shutil.copytree(demo.root, data)
    for p in [data, *data.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        snapshot = _tree(tmp_path)
        out = tmp_path / "out"
        assert (
            _run(data, out, "--participant-label", "01", seeds=data / "code" / "demo_seeds.tsv")
            == 0
        )
        after = _tree(tmp_path)
        new = {p for p in after if p not in snapshot}
        assert all(p.startswith(("out", "work")) for p in new), sorted(new)[:5]
        assert {p: after[p] for p in snapshot} == snapshot
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_builtin_seed_set_on_demo_grid(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = _run(
        demo.root,
        out,
        "--participant-label",
        "01",
        "--run",
        "1",
        "--seeds",
        "power2011",
        "--allow-overlap",
        "--radius",
        "5",
    )
    assert code == 0
    table = pd.read_csv(_timeseries(out)[0], sep="\t")
    assert table.shape[1] == 264
    sidecar = json.loads(_timeseries(out)[0].with_suffix(".json").read_text())
    missing = sidecar["MissingSeeds"]
    # seeds outside the demo's ellipsoid brain mask are n/a, not a crash
    assert table[missing].isna().all().all()
    assert table.drop(columns=missing).notna().all().all()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--participant-label", "99"], 66, "99"),
        (["--task", "nback"], 66, "nback"),  # one code for "nothing selected" (issue 14)
        (["--space", "MNI152NLin6Asym"], 66, "MNI152NLin6Asym"),
        (["--seeds", "nosuchset"], 66, "nosuchset"),
        (["--denoise-strategy", "nosuch"], 64, "nosuch"),
        (["--space", "bad:space"], 64, "--space"),
    ],
)
def test_bad_inputs_exit_codes(
    demo, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra, code, message
) -> None:
    got = _run(demo.root, tmp_path / "out", *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len([line for line in err if "error" in line]) == 1
    assert message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_one_failing_run_does_not_lose_the_others(
    demo_copy: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = demo_copy.root
    bad = next(data.glob("sub-01/func/*run-1*desc-preproc_bold.nii.gz"))
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) // 3])  # truncated gzip
    out = tmp_path / "out"
    assert _run(data, out, seeds=data / "code" / "demo_seeds.tsv") == 1
    assert len(_timeseries(out)) == 3
    err = capsys.readouterr().err
    assert f"run failed: {bad.name}" in err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_parallel_runs_equal_serial(demo, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(demo.root, a, seeds=demo.seeds_tsv) == 0
    assert _run(demo.root, b, "--nprocs", "2", seeds=demo.seeds_tsv) == 0
    for fa, fb in zip(_timeseries(a), _timeseries(b), strict=True):
        assert fa.read_bytes() == fb.read_bytes()


def test_template_mask_from_local_templateflow(
    demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nibabel as nib

    home = tmp_path / "tf"
    tpl = home / "tpl-MNI152NLin2009cAsym"
    tpl.mkdir(parents=True)
    (tpl / "template_description.json").write_text(json.dumps({"Name": "MNI152NLin2009cAsym"}))
    mask_src = next(demo.root.glob("sub-01/func/*run-1*desc-brain_mask.nii.gz"))
    img = nib.load(mask_src)
    nib.save(img, tpl / "tpl-MNI152NLin2009cAsym_res-04_desc-brain_mask.nii.gz")
    (home / "dataset_description.json").write_text(
        json.dumps({"Name": "TemplateFlow", "BIDSVersion": "1.4.0"})
    )
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    out = tmp_path / "out"
    assert (
        _run(
            demo.root,
            out,
            "--participant-label",
            "01",
            "--run",
            "1",
            "--mask",
            "template",
            seeds=demo.seeds_tsv,
        )
        == 0
    )
    sidecar = json.loads(_timeseries(out)[0].with_suffix(".json").read_text())
    assert "TemplateFlow" in sidecar["Mask"]


def test_template_mask_missing_offline_is_clear(
    demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty_tf"))
    out = tmp_path / "out"
    code = _run(
        demo.root,
        out,
        "--participant-label",
        "01",
        "--run",
        "1",
        "--mask",
        "template",
        seeds=demo.seeds_tsv,
    )
    assert code == 66  # refused once before any run (issue 14), not one failure per run
    assert "TEMPLATEFLOW_HOME" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "empty_tf")


def test_demo_command_runs_both_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bids_spheres.app.cli import demo_main

    assert demo_main([str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "signals of shape (98, 8)" in out
    z = {
        line.split(":")[0].split()[-1]: float(line.rsplit("=", 1)[1])
        for line in out.splitlines()
        if "planted pair" in line
    }
    assert set(z) == {"PCC-mPFC", "LMotor-RMotor"}
    assert min(z.values()) > 1.5
    assert float(out.split("|z| <=")[1].split()[0]) < 0.5
    assert (tmp_path / "demo" / "bids_spheres" / "group" / "report.html").is_file()
