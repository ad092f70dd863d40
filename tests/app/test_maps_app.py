"""--maps / --map-seeds: per-run seed-to-voxel maps and the group maps (bids_spheres.app.maps).

Checks the module's promise on the demo dataset (2 participants x 2 runs, planted
PCC-mPFC coupling): the names, the sidecars and the completion marker; the
planted region lights up in PCC's map and independent seeds do not; seeds
written n/a get no map; reruns skip; the group mean and t maps equal what is
recomputed here from the run maps (runs averaged within participant first), with
their degrees of freedom; the report shows their mosaics; a bad --map-seeds is a
usage error.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_participant

from bids_spheres.app.cli import main
from bids_spheres.app.config import RunConfig
from bids_spheres.app.demo import DEMO_SEEDS, INDEPENDENT_SEEDS, world_to_voxel

RUN_MAP = "_atlas-demoseeds_seed-{seed}_stat-{stat}_desc-simple_boldmap"
GROUP_MAP = "space-MNI152NLin2009cAsym_atlas-demoseeds_seed-{seed}_stat-{stat}_desc-simple_statmap"


@pytest.fixture(scope="module")
def mapped(demo_dataset, tmp_path_factory) -> Path:
    """The demo's participant level with --maps --map-seeds PCC LMotor, then the group level."""
    out = tmp_path_factory.mktemp("maps") / "out"
    assert run_participant(demo_dataset.root, out, "--map-seeds", "PCC", "LMotor") == 0
    assert main([str(demo_dataset.root), str(out), "group"]) == 0
    return out


def _timeseries_sidecars(out: Path) -> list[Path]:
    return sorted(out.glob("sub-*/func/*_desc-simple_timeseries.json"))


def test_run_maps_names_sidecars_and_marker(mapped: Path) -> None:
    sidecars = _timeseries_sidecars(mapped)
    assert len(sidecars) == 4
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        stem = path.name.split("_atlas-")[0]
        assert set(sidecar["SeedMaps"]) == {"PCC", "LMotor"}
        for seed in ("PCC", "LMotor"):
            names = {}
            for stat in ("r", "fisherz"):
                name = stem + RUN_MAP.format(seed=seed, stat=stat)
                assert (path.parent / f"{name}.nii.gz").is_file()
                assert (
                    sidecar["SeedMaps"][seed][stat]
                    == (path.parent / f"{name}.nii.gz").relative_to(mapped).as_posix()
                )
                # the completion marker checksums the maps too
                assert f"{name}.nii.gz" in sidecar["OutputChecksums"]
                assert f"{name}.json" in sidecar["OutputChecksums"]
                names[stat] = name
            meta = json.loads((path.parent / f"{names['r']}.json").read_text())
            assert meta["Statistic"] == "PearsonCorrelation"
            assert meta["Seed"]["Name"] == seed
            assert meta["NumberOfVolumes"] == len(sidecar["KeptVolumes"])
            assert meta["Sources"][0].endswith(path.with_suffix(".tsv").name)
            assert meta["CleaningParameters"]["maps"] == ["LMotor", "PCC"]  # sorted
            r = nib.load(path.parent / f"{names['r']}.nii.gz").get_fdata()
            z = nib.load(path.parent / f"{names['fisherz']}.nii.gz").get_fdata()
            np.testing.assert_allclose(z, np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7)), atol=2e-5)
            assert (
                json.loads((path.parent / f"{names['fisherz']}.json").read_text())["Statistic"]
                == "FisherZ"
            )
        # seeds not chosen get no map
        assert not list(path.parent.glob(stem + "*_seed-mPFC_*"))


def test_planted_region_lights_up_in_the_run_maps(mapped: Path) -> None:
    centres = {s.name: world_to_voxel(s.xyz) for s in DEMO_SEEDS}
    for path in _timeseries_sidecars(mapped):
        stem = path.name.split("_atlas-")[0]
        z = nib.load(path.parent / f"{stem}{RUN_MAP.format(seed='PCC', stat='fisherz')}.nii.gz")
        z = z.get_fdata()
        n = len(json.loads(path.read_text())["KeptVolumes"])
        assert z[centres["mPFC"]] > 1.0  # r > 0.76
        assert z[centres["mPFC"]] * np.sqrt(n - 3) > 3.0  # as a z statistic too
        independent = [abs(z[centres[name]]) for name in INDEPENDENT_SEEDS]
        assert max(independent) < 0.5
        assert (z == 0).sum() > 0.3 * z.size  # outside the brain mask: 0


def test_group_mean_and_t_maps_equal_recomputed(mapped: Path) -> None:
    group = mapped / "group"
    per_participant = []
    for sub in ("01", "02"):
        runs = sorted(
            mapped.glob(f"sub-{sub}/func/*{RUN_MAP.format(seed='PCC', stat='fisherz')}.nii.gz")
        )
        assert len(runs) == 2
        per_participant.append(np.mean([nib.load(p).get_fdata() for p in runs], axis=0))
    stack = np.stack(per_participant)
    inside = np.all(stack != 0, axis=0)
    mean_img = nib.load(group / f"{GROUP_MAP.format(seed='PCC', stat='effect')}.nii.gz")
    t_img = nib.load(group / f"{GROUP_MAP.format(seed='PCC', stat='t')}.nii.gz")
    mean = mean_img.get_fdata()
    t = t_img.get_fdata()
    np.testing.assert_allclose(mean[inside], stack.mean(axis=0)[inside], atol=1e-5)
    assert np.all(mean[~inside] == 0)
    with np.errstate(invalid="ignore"):  # 0 / 0 outside the masks
        expected_t = stack.mean(axis=0) / (stack.std(axis=0, ddof=1) / np.sqrt(2))
    np.testing.assert_allclose(t[inside], expected_t[inside], rtol=1e-4, atol=1e-4)
    assert t_img.header.get_intent() == ("t test", (1.0,), "t")
    meta = json.loads((group / f"{GROUP_MAP.format(seed='PCC', stat='t')}.json").read_text())
    assert meta["DegreesOfFreedom"] == 1 and meta["NumberOfParticipants"] == 2
    assert len(meta["Sources"]) == 4  # BIDS URIs of this dataset's Fisher z maps
    for source in meta["Sources"]:
        assert source.startswith("bids::sub-") and "_stat-fisherz_" in source
        assert (mapped / source.removeprefix("bids::")).is_file()
    np.testing.assert_allclose(mean_img.affine, t_img.affine)
    report = (group / "report.html").read_text()
    assert "Seed-to-voxel maps" in report
    assert "Seed PCC: mean Fisher z across participants" in report
    assert "Seed LMotor: one-sample t" in report


def test_unreadable_run_map_leaves_only_that_run_out(
    mapped: Path, demo_dataset, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "out"
    shutil.copytree(mapped, out)
    (broken,) = out.glob(f"sub-01/func/*run-1*{RUN_MAP.format(seed='PCC', stat='fisherz')}.nii.gz")
    broken.write_bytes(broken.read_bytes()[:500])  # truncated
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        assert main([str(demo_dataset.root), str(out), "group"]) == 0
    assert f"cannot read {broken}" in caplog.text
    meta = json.loads(
        (out / "group" / f"{GROUP_MAP.format(seed='PCC', stat='t')}.json").read_text()
    )
    assert len(meta["Sources"]) == 3 and meta["NumberOfParticipants"] == 2


def test_rerun_skips_finished_runs_with_maps(mapped: Path, demo_dataset, caplog) -> None:
    before = {p: p.stat().st_mtime_ns for p in mapped.glob("sub-*/func/*boldmap.nii.gz")}
    assert run_participant(demo_dataset.root, mapped, "--map-seeds", "PCC", "LMotor") == 0
    after = {p: p.stat().st_mtime_ns for p in mapped.glob("sub-*/func/*boldmap.nii.gz")}
    assert before == after and len(before) == 16


def test_seed_written_na_gets_no_map(demo_small, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text(
        "name\tx\ty\tz\tradius\tnetwork\n"
        "PCC\t0\t-52\t26\t8\tDefaultMode\n"
        "Outside\t-88\t-124\t-70\t4\tNone\n"  # in the field of view, outside the brain
    )
    out = tmp_path / "out"
    code = main(
        [
            *(str(demo_small.root), str(out), "participant", "--seeds", str(seeds)),
            *("--maps", "--work-dir", str(tmp_path / "work")),
        ]
    )
    assert code == 0
    (sidecar,) = out.glob("sub-*/func/*_timeseries.json")
    data = json.loads(sidecar.read_text())
    assert data["MissingSeeds"] == ["Outside"]
    assert set(data["SeedMaps"]) == {"PCC"}
    assert not list(out.glob("sub-*/func/*seed-Outside*"))
    assert len(list(out.glob("sub-*/func/*seed-PCC*boldmap.nii.gz"))) == 2


def test_unknown_map_seed_is_a_usage_error(demo_small, tmp_path: Path, capsys) -> None:
    code = run_participant(demo_small.root, tmp_path / "out", "--map-seeds", "PCC", "Nowhere")
    assert code == 64
    err = capsys.readouterr().err
    assert "--map-seeds Nowhere" in err and "PCC" in err


def test_maps_enter_the_parameters_only_when_asked() -> None:
    base = {"bids_dir": Path("/in"), "output_dir": Path("/out"), "analysis_level": "participant"}
    plain = RunConfig(**base, work_dir=Path("/w"))
    assert "maps" not in plain.cleaning_parameters()
    mapped = RunConfig(**base, work_dir=Path("/w"), maps=True, map_seeds=("PCC",))
    assert mapped.cleaning_parameters()["maps"] == ["PCC"]
    assert RunConfig(**base, work_dir=Path("/w"), maps=True).cleaning_parameters()["maps"] == "all"
    # sorted, unique, and every seed is "all"
    some = RunConfig(**base, work_dir=Path("/w"), maps=True, map_seeds=("b", "a", "b"))
    assert some.cleaning_parameters()["maps"] == ["a", "b"]
    assert some.cleaning_parameters(["a", "b", "c"])["maps"] == ["a", "b"]
    assert some.cleaning_parameters(["b", "a"])["maps"] == "all"


def _maps_of(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("sub-*/func/*_boldmap.*"))


def test_maps_mask_with_mask_none_is_an_input(demo_small, copy_demo, tmp_path: Path) -> None:
    """--maps --mask none maps over fMRIPrep's brain mask: it is hashed, listed and named."""
    data = copy_demo(demo_small, tmp_path / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out, "--maps", "--mask", "none") == 0
    (sidecar_path,) = out.glob("sub-*/func/*_timeseries.json")
    sidecar = json.loads(sidecar_path.read_text())
    (mask,) = data.fmriprep_dir.glob("sub-*/func/*MNI152NLin2009cAsym*_desc-brain_mask.nii.gz")
    uri = "bids:fmriprep:" + mask.relative_to(data.fmriprep_dir).as_posix()
    assert uri in sidecar["Sources"]
    meta_path = next(out.glob("sub-*/func/*seed-PCC_stat-r_*_boldmap.json"))
    meta = json.loads(meta_path.read_text())
    assert meta["Mask"] == uri
    before = meta["MaskVoxelCount"]
    # a changed mask makes the run unfinished: its maps are recomputed over it
    img = nib.load(mask)
    values = np.asarray(img.dataobj).copy()
    values[: values.shape[0] // 2] = 0
    nib.Nifti1Image(values, img.affine, img.header).to_filename(mask)
    assert run_participant(data.root, out, "--maps", "--mask", "none") == 0
    assert json.loads(meta_path.read_text())["MaskVoxelCount"] < before


def test_rerun_with_fewer_maps_removes_the_stale_ones(demo_small, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_participant(demo_small.root, out, "--map-seeds", "PCC", "LMotor") == 0
    assert len(_maps_of(out)) == 8
    assert run_participant(demo_small.root, out, "--map-seeds", "PCC") == 0
    names = _maps_of(out)
    assert len(names) == 4 and all("seed-PCC_" in name for name in names)
    # another run's (or another desc's) map files are never touched
    (func,) = {p.parent for p in out.glob("sub-*/func/*_timeseries.json")}
    other = (
        func / "sub-01_task-other_space-X_atlas-demoseeds_seed-PCC_stat-r_desc-simple_boldmap.json"
    )
    other.write_text("{}")
    assert run_participant(demo_small.root, out) == 0  # without --maps: no map of this run
    assert _maps_of(out) == [other.name]


def test_bids_uris_name_declared_datasets(mapped: Path) -> None:
    links = json.loads((mapped / "dataset_description.json").read_text())["DatasetLinks"]
    found = set()
    for path in mapped.rglob("*.json"):
        found |= set(re.findall(r'"bids:([^:"/]*):', path.read_text()))
    assert "" in found and "fmriprep" in found  # maps and relmats name this dataset's files
    assert found <= {"", *links}, found - {"", *links}


def test_order_and_completeness_of_map_seeds_do_not_change_the_hash(
    demo_small, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "out"
    names = [s.name for s in DEMO_SEEDS]
    assert run_participant(demo_small.root, out, "--map-seeds", "PCC", "LMotor") == 0
    hash_of = lambda: json.loads(next(out.glob("sub-*/func/*_timeseries.json")).read_text())[  # noqa: E731
        "ParametersHash"
    ]
    first = hash_of()
    with caplog.at_level(logging.INFO, logger="bids_spheres"):
        assert run_participant(demo_small.root, out, "--map-seeds", "LMotor", "PCC", "PCC") == 0
    assert "finished already" in caplog.text and hash_of() == first
    assert run_participant(demo_small.root, out, "--maps") == 0
    everything = hash_of()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bids_spheres"):
        assert run_participant(demo_small.root, out, "--map-seeds", *reversed(names)) == 0
    assert "finished already" in caplog.text and hash_of() == everything


def test_seed_without_variance_gets_no_map(demo_small, tmp_path: Path, caplog) -> None:
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text(
        "name\tx\ty\tz\tradius\tnetwork\n"
        "PCC\t0\t-52\t26\t8\tDefaultMode\n"
        "Outside\t-88\t-124\t-70\t4\tNone\n"  # outside the brain: a constant signal
    )
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        code = main(
            [
                *(str(demo_small.root), str(out), "participant", "--seeds", str(seeds)),
                *("--maps", "--mask", "none", "--work-dir", str(tmp_path / "work")),
            ]
        )
    assert code == 0
    (sidecar,) = out.glob("sub-*/func/*_timeseries.json")
    data = json.loads(sidecar.read_text())
    assert data["Seeds"]["Outside"]["Status"] == "ok"  # its timeseries column is written
    assert set(data["SeedMaps"]) == {"PCC"}
    assert "no variance" in data["SeedMapsNotWritten"]["Outside"]
    assert "Outside" in caplog.text and "no variance" in caplog.text
    assert not list(out.glob("sub-*/func/*seed-Outside*"))


def test_maps_without_any_brain_mask_are_refused_before_any_run(
    demo_small, copy_demo, tmp_path: Path, capsys
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    for mask in data.fmriprep_dir.rglob("*_desc-brain_mask.nii.gz"):
        mask.unlink()
    out = tmp_path / "out"
    assert run_participant(data.root, out, "--maps", "--mask", "none") == 66
    err = capsys.readouterr().err
    assert "--maps" in err and "desc-brain_mask" in err and "--mask template" in err
    assert not list(out.glob("sub-*"))


def test_no_group_maps_in_a_native_space(tmp_path: Path, caplog) -> None:
    """T1w maps of different subjects are not averaged (other anatomies); MNI ones are."""
    from bids_spheres.app.maps import GroupMaps

    rng = np.random.default_rng(0)
    group = GroupMaps(tmp_path, "demoseeds", "simple")
    for sub in ("01", "02"):
        for space in ("T1w", "MNI152NLin2009cAsym"):
            rel = f"sub-{sub}/func/sub-{sub}_space-{space}_seed-PCC_fisherz.nii.gz"
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            z = rng.normal(size=(4, 4, 4)).astype(np.float32)
            nib.Nifti1Image(z, np.eye(4)).to_filename(tmp_path / rel)
            group.add(sub, {"space": space}, {"SeedMaps": {"PCC": {"fisherz": rel}}})
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        summaries = group.finish(tmp_path / "group")
    assert [(s.space, s.n_participants) for s in summaries] == [("MNI152NLin2009cAsym", 2)]
    written = sorted(p.name for p in (tmp_path / "group").iterdir())
    assert written and not [name for name in written if "T1w" in name]
    warned = [r.getMessage() for r in caplog.records if "T1w" in r.getMessage()]
    assert len(warned) == 1 and "per subject" in warned[0] and "MNI" in warned[0]


def test_participant_pages_of_mapped_runs_say_why_they_have_no_carpet(mapped: Path) -> None:
    # --maps: the run's one pass is the maps' (seed_maps), which keeps no single voxels;
    # the participant page is still written, with the other sections, and says why
    pages = sorted(mapped.glob("sub-*.html"))
    assert pages, "no participant report written with --maps"
    page = pages[0].read_text(encoding="utf-8")
    assert "No carpet: the run was processed with --no-reports or with --maps" in page
    assert "Seeds on the participant's brain" in page
    assert not list(mapped.glob("sub-*/figures/*_carpet.svg"))


def test_methods_and_readme_describe_the_maps(mapped: Path) -> None:
    methods = " ".join((mapped / "logs" / "CITATION.md").read_text().split())
    assert "Pearson correlation r of the seed's cleaned signal" in methods
    assert "Fisher z = arctanh(r)" in methods
    assert "for the seeds `PCC`, `LMotor` (--map-seeds)" in methods
    readme = (mapped / "README.md").read_text()
    assert "_stat-fisherz_desc-<strategy>_boldmap.nii.gz" in readme


def test_a_maps_job_updates_our_readme_but_not_a_users(demo_small, copy_demo, tmp_path) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out) == 0
    readme = out / "README.md"
    assert "boldmap" not in readme.read_text()
    assert run_participant(data.root, out, "--maps") == 0
    assert "_stat-r_desc-<strategy>_boldmap.nii.gz" in readme.read_text()
    readme.write_text("my notes\n")
    assert run_participant(data.root, out, "--map-seeds", "PCC", "--overwrite") == 0
    assert readme.read_text() == "my notes\n"
