"""Tests of bids_spheres.app.group: QC tables, group connectome, report, errors.

The participant-level outputs are written here exactly as ``workflow._process``
writes them (same file names as ``outputs.run_paths``, same sidecar keys,
timeseries and relmat TSVs with the seed names as header and ``n/a`` for
missing seeds); every expected value is recomputed here from what was
written, independently of the module under test.
"""

from __future__ import annotations

import html.parser
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_spheres.app import group
from bids_spheres.app.config import RunConfig
from bids_spheres.errors import MissingInputError, OutputError, UsageError

ATLAS = "test"
DESC = "simple"
SPACE = "MNI152NLin2009cAsym"
SEEDS = {  # name: (x, y, z, network)
    "pcc": (0.0, -52.0, 26.0, "Default"),
    "mpfc": (0.0, 52.0, -6.0, "Default"),
    "v1l": (-10.0, -90.0, 2.0, "Visual"),
    "v1r": (12.0, -88.0, 4.0, "Visual"),
    "amyg": (-22.0, -4.0, -18.0, None),
    "cereb": (20.0, -80.0, -60.0, None),
}
NAMES = list(SEEDS)
PLANTED = ("pcc", "mpfc")  # strongly correlated in every run
MAX_MEAN_FD = 0.5
MIN_VOLUMES = 50


@pytest.fixture(autouse=True)
def _plain_logger():
    """Undo what an earlier ``cli.main`` did to the package logger (handler, no propagation)."""
    logger = logging.getLogger("bids_spheres")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers, logger.propagate = [], True
    logger.setLevel(logging.NOTSET)
    yield
    logger.handlers, logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


@dataclass
class Run:
    sub: str
    run: int
    ses: str | None = None
    n_volumes: int = 120
    n_nonsteady: int = 2
    fd_scale: float = 0.15
    scrub_above: float | None = None
    missing: tuple[str, ...] = ("cereb",)
    desc: str = DESC
    seed: int = 0
    # filled by write_run
    fd: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kept: list[int] = field(default_factory=list)
    relmat: np.ndarray = field(default_factory=lambda: np.zeros(0))
    coverage: dict[str, float] = field(default_factory=dict)
    tsnr: dict[str, float | None] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        ses = f"_ses-{self.ses}" if self.ses else ""
        return f"sub-{self.sub}{ses}_task-rest_run-{self.run}_space-{SPACE}_res-2"

    def func_dir(self, out: Path) -> Path:
        d = out / f"sub-{self.sub}"
        return (d / f"ses-{self.ses}" if self.ses else d) / "func"

    def timeseries(self, out: Path, ext: str = ".tsv") -> Path:
        return self.func_dir(out) / f"{self.stem}_atlas-{ATLAS}_desc-{self.desc}_timeseries{ext}"

    def relmat_path(self, out: Path, ext: str = ".tsv") -> Path:
        name = f"{self.stem}_atlas-{ATLAS}_meas-PearsonCorrelation_desc-{self.desc}_relmat{ext}"
        return self.func_dir(out) / name


def write_run(out: Path, r: Run) -> Run:
    """Write one run's outputs like workflow._process (timeseries, relmat, sidecars)."""
    rng = np.random.default_rng(r.seed)
    n = r.n_volumes
    fd = np.abs(rng.normal(0.0, r.fd_scale, n))
    fd[0] = np.nan  # fMRIPrep: no FD for the first volume
    nonsteady = list(range(r.n_nonsteady))
    scrubbed = (
        [i for i in range(n) if i not in nonsteady and fd[i] > r.scrub_above]
        if r.scrub_above is not None
        else []
    )
    kept = [i for i in range(n) if i not in nonsteady and i not in scrubbed]
    shared = rng.standard_normal(len(kept))
    table = rng.standard_normal((len(kept), len(NAMES)))
    table[:, 0] = shared + 0.3 * rng.standard_normal(len(kept))  # pcc
    table[:, 1] = shared + 0.3 * rng.standard_normal(len(kept))  # mpfc
    usable = np.array([name not in r.missing for name in NAMES])
    table[:, ~usable] = np.nan
    relmat = np.full((len(NAMES), len(NAMES)), np.nan)
    relmat[np.ix_(usable, usable)] = np.corrcoef(table[:, usable], rowvar=False)
    r.fd, r.kept, r.relmat = fd, kept, relmat
    r.coverage = {name: (0.2 if name in r.missing else round(0.8 + 0.03 * i, 4))
                  for i, name in enumerate(NAMES)}  # fmt: skip
    r.tsnr = {name: (None if name in r.missing else round(40.0 + 5 * i + r.seed, 3))
              for i, name in enumerate(NAMES)}  # fmt: skip

    func = r.func_dir(out)
    func.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table, columns=NAMES).to_csv(
        r.timeseries(out), sep="\t", index=False, na_rep="n/a", float_format="%.9g"
    )
    pd.DataFrame(relmat, columns=NAMES).to_csv(
        r.relmat_path(out), sep="\t", index=False, na_rep="n/a", float_format="%.9g"
    )
    seed_info = {
        name: {
            "CoordinatesMM": list(SEEDS[name][:3]),
            "RadiusMM": 5.0,
            "Network": SEEDS[name][3],
            "VoxelCount": 33,
            "Coverage": r.coverage[name],
            "Status": "n/a: coverage below threshold" if name in r.missing else "ok",
            "TemporalSNR": r.tsnr[name],
        }
        for name in NAMES
    }
    sidecar = {
        "Description": "Mean signal of spheres ...",
        "SamplingFrequency": 0.5,
        "RepetitionTime": 2.0,
        "Sources": ["bids:fmriprep:sub-x/func/bold.nii.gz"],
        "SeedSet": ATLAS,
        "SeedSpace": "MNI152",
        "Space": SPACE,
        "Mask": "brain_mask.nii.gz",
        "Seeds": seed_info,
        "MissingSeeds": [name for name in NAMES if name in r.missing],
        "NumberOfVolumes": n,
        "KeptVolumes": kept,
        "NonSteadyStateVolumes": nonsteady,
        "ScrubbedVolumes": scrubbed,
        "MeanFramewiseDisplacement": float(np.nanmean(fd)),
        "MaxFramewiseDisplacement": float(np.nanmax(fd)),
        "Denoising": {"strategy": r.desc},
        "CleaningParameters": {"t_r": 2.0},
        "SoftwareVersion": "bids_spheres 0.1.0",
        "ParametersHash": "0" * 64,
    }
    r.relmat_path(out, ".json").write_text(json.dumps({"RelationshipMeasure": "Pearson"}))
    r.timeseries(out, ".json").write_text(json.dumps(sidecar, indent=2))
    return r


def write_seed_table(out: Path) -> None:
    rows = ["name\tx\ty\tz\tradius\tnetwork"]
    for name, (x, y, z, network) in SEEDS.items():
        rows.append(f"{name}\t{x:g}\t{y:g}\t{z:g}\tn/a\t{network or 'n/a'}")
    (out / f"atlas-{ATLAS}_seeds.tsv").write_text("\n".join(rows) + "\n")
    (out / f"atlas-{ATLAS}_seeds.json").write_text(json.dumps({"Space": "MNI152"}))


def standard_dataset(tmp_path: Path) -> tuple[Path, Path, list[Run]]:
    """3 participants x 2 runs usable (sub-02 in two sessions, amyg missing everywhere except
    sub-03), one FD-excluded run (sub-03), one participant with too few volumes (sub-04);
    bids_dir holds sub-05 (raw) and sub-06 (derivatives/fmriprep) without output."""
    out, bids = tmp_path / "out", tmp_path / "bids"
    out.mkdir()
    amyg_missing = ("cereb", "amyg")
    runs = [
        Run("01", 1, seed=1, missing=amyg_missing),
        Run("01", 2, seed=2, fd_scale=0.2, missing=amyg_missing),
        Run("02", 1, ses="1", seed=3, missing=amyg_missing),
        Run("02", 1, ses="2", seed=4, scrub_above=0.3, missing=amyg_missing),
        Run("03", 1, seed=5),
        Run("03", 2, seed=6, fd_scale=1.0),  # mean FD ~0.8 > 0.5
        Run("04", 1, seed=7, n_volumes=40),  # 38 kept < 50
    ]
    for r in runs:
        write_run(out, r)
    write_seed_table(out)
    for sub in ("01", "02", "03", "04", "05"):
        (bids / f"sub-{sub}" / "anat").mkdir(parents=True)
    (bids / "derivatives" / "fmriprep" / "sub-06").mkdir(parents=True)
    (bids / "dataset_description.json").write_text("{}")
    return out, bids, runs


def config_for(out: Path, bids: Path, **kw: object) -> RunConfig:
    return RunConfig(
        bids_dir=bids,
        output_dir=out,
        analysis_level="group",
        work_dir=out / ".work",
        max_mean_fd=kw.pop("max_mean_fd", MAX_MEAN_FD),  # type: ignore[arg-type]
        min_volumes=kw.pop("min_volumes", MIN_VOLUMES),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def group_file(out: Path, name: str) -> Path:
    path = out / "group" / name
    assert path.is_file(), f"{name} not written; group/ holds {os.listdir(out / 'group')}"
    return path


RUNS_TSV = f"atlas-{ATLAS}_desc-{DESC}_runs.tsv"
SEEDS_TSV = f"atlas-{ATLAS}_desc-{DESC}_seeds.tsv"
MEAN_TSV = f"atlas-{ATLAS}_meas-FisherZMean_desc-{DESC}_relmat.tsv"
SD_TSV = f"atlas-{ATLAS}_meas-FisherZSD_desc-{DESC}_relmat.tsv"


def expected_connectome(out: Path, runs: list[Run]) -> tuple[np.ndarray, np.ndarray, int]:
    """Independent computation from the relmat files as written (read back with numpy)."""
    per_sub: dict[str, list[np.ndarray]] = {}
    for r in runs:
        if not is_usable(r):
            continue
        values = np.genfromtxt(r.relmat_path(out), delimiter="\t", skip_header=1,
                               missing_values="n/a", filling_values=np.nan)  # fmt: skip
        z = np.arctanh(np.clip(values, -(1 - 1e-7), 1 - 1e-7))
        per_sub.setdefault(r.sub, []).append(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-n/a pairs
        sub_means = np.stack([np.nanmean(np.stack(v), axis=0) for v in per_sub.values()])
        mean = np.nanmean(sub_means, axis=0)
        sd = np.nanstd(sub_means, axis=0, ddof=1)
    counts = np.isfinite(sub_means).sum(axis=0)
    sd[counts < 2] = np.nan
    np.fill_diagonal(mean, np.nan)
    np.fill_diagonal(sd, np.nan)
    return mean, sd, len(per_sub)


def is_usable(r: Run) -> bool:
    return float(np.nanmean(r.fd)) <= MAX_MEAN_FD and len(r.kept) >= MIN_VOLUMES


# --------------------------------------------------------------------------- QC table


def test_runs_table_matches_independent_qc(tmp_path: Path) -> None:
    out, bids, runs = standard_dataset(tmp_path)
    assert group.run(config_for(out, bids)) == 0
    table = read_tsv(group_file(out, RUNS_TSV))
    assert len(table) == len(runs)
    for r in runs:
        rel = r.timeseries(out).relative_to(out).as_posix()
        row = table[table["timeseries"] == rel]
        assert len(row) == 1, rel
        row = row.iloc[0]
        assert row["participant_id"] == f"sub-{r.sub}"
        assert (row["session_id"] == f"ses-{r.ses}") if r.ses else pd.isna(row["session_id"])
        assert row["task"] == "rest" and int(row["run"]) == r.run and row["space"] == SPACE
        assert row["n_volumes"] == r.n_volumes
        assert row["n_nonsteady"] == r.n_nonsteady
        assert row["n_scrubbed"] == r.n_volumes - r.n_nonsteady - len(r.kept)
        assert row["n_kept"] == len(r.kept)
        assert row["mean_fd"] == pytest.approx(np.nanmean(r.fd), abs=1e-6)
        assert row["max_fd"] == pytest.approx(np.nanmax(r.fd), abs=1e-6)
        assert row["mean_coverage"] == pytest.approx(np.mean(list(r.coverage.values())), 1e-4)
        assert row["n_missing_seeds"] == len(r.missing)
        snr = [v for v in r.tsnr.values() if v is not None]
        assert row["median_tsnr"] == pytest.approx(np.median(snr), abs=1e-3)
        assert row["usable"] == ("yes" if is_usable(r) else "no")
        if is_usable(r):
            assert pd.isna(row["exclusion_reason"])
    reasons = dict(zip(table["timeseries"], table["exclusion_reason"], strict=True))
    fd_run, short_run = runs[5], runs[6]
    assert "mean FD" in reasons[fd_run.timeseries(out).relative_to(out).as_posix()]
    assert (
        "38 kept volumes < --min-volumes 50"
        in reasons[short_run.timeseries(out).relative_to(out).as_posix()]
    )
    assert sum(is_usable(r) for r in runs) == 5  # the dataset exercises both thresholds
    sidecar = json.loads(group_file(out, RUNS_TSV.replace(".tsv", ".json")).read_text())
    assert "0.5" in sidecar["usable"]["Description"] and "50" in sidecar["usable"]["Description"]


def test_thresholds_come_from_the_config(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids, max_mean_fd=2.0, min_volumes=30))
    table = read_tsv(group_file(out, RUNS_TSV))
    assert (table["usable"] == "yes").all()
    group.run(config_for(out, bids, max_mean_fd=0.01, min_volumes=30))
    table = read_tsv(group_file(out, RUNS_TSV))
    assert (table["usable"] == "no").all()
    assert read_tsv(group_file(out, MEAN_TSV)).isna().all().all()
    meta = json.loads(group_file(out, MEAN_TSV.replace(".tsv", ".json")).read_text())
    assert meta["NumberOfParticipants"] == 0 and meta["Sources"] == []


def test_seeds_table(tmp_path: Path) -> None:
    out, bids, runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids))
    seeds = read_tsv(group_file(out, SEEDS_TSV)).set_index("name")
    assert list(seeds.index) == NAMES
    for name in NAMES:
        x, y, z, network = SEEDS[name]
        row = seeds.loc[name]
        assert (row["x"], row["y"], row["z"]) == (x, y, z)
        assert row["radius"] == 5.0  # from the sidecars: the table gives n/a
        assert (row["network"] == network) if network else pd.isna(row["network"])
        assert row["mean_coverage"] == pytest.approx(
            np.mean([r.coverage[name] for r in runs]), abs=1e-4
        )
        assert row["fraction_missing"] == pytest.approx(
            np.mean([name in r.missing for r in runs]), abs=1e-4
        )
        snr = [r.tsnr[name] for r in runs if r.tsnr[name] is not None]
        if snr:
            assert row["median_tsnr"] == pytest.approx(np.median(snr), abs=1e-3)
        else:
            assert pd.isna(row["median_tsnr"])
    assert seeds.loc["cereb", "fraction_missing"] == 1.0


def test_seeds_come_from_sidecars_without_the_seed_table(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    (out / f"atlas-{ATLAS}_seeds.tsv").unlink()
    group.run(config_for(out, bids))
    seeds = read_tsv(group_file(out, SEEDS_TSV))
    assert list(seeds["name"]) == NAMES
    assert list(seeds["y"]) == [SEEDS[n][1] for n in NAMES]
    meta = json.loads(group_file(out, MEAN_TSV.replace(".tsv", ".json")).read_text())
    assert meta["NodeFiles"] == [f"group/{SEEDS_TSV}"]


# --------------------------------------------------------------------------- connectome


def test_group_connectome_is_mean_over_participants_of_within_participant_means(
    tmp_path: Path,
) -> None:
    out, bids, runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids))
    mean_table = read_tsv(group_file(out, MEAN_TSV))
    sd_table = read_tsv(group_file(out, SD_TSV))
    assert list(mean_table.columns) == NAMES and list(sd_table.columns) == NAMES
    mean, sd, n_participants = expected_connectome(out, runs)
    np.testing.assert_allclose(mean_table.to_numpy(float), mean, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(sd_table.to_numpy(float), sd, rtol=1e-7, atol=1e-8)
    assert n_participants == 3

    # averaging within participant first differs from pooling all runs (sub-01, sub-02 have
    # two usable runs, sub-03 one): check the pooled mean would NOT pass
    pooled = []
    for r in runs:
        if is_usable(r):
            pooled.append(np.arctanh(np.clip(r.relmat, -(1 - 1e-7), 1 - 1e-7)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled_mean = np.nanmean(np.stack(pooled), axis=0)
    i, j = NAMES.index("pcc"), NAMES.index("v1l")
    assert abs(pooled_mean[i, j] - mean[i, j]) > 1e-4

    meta = json.loads(group_file(out, MEAN_TSV.replace(".tsv", ".json")).read_text())
    assert meta["NumberOfParticipants"] == 3
    assert meta["Weighted"] is True and meta["Directed"] is False
    assert meta["ValidDiagonal"] is False and meta["StorageFormat"] == "Full"
    assert "within each participant first" in meta["Description"]
    expected_sources = sorted(
        "bids::" + r.relmat_path(out).relative_to(out).as_posix() for r in runs if is_usable(r)
    )
    assert sorted(meta["Sources"]) == expected_sources
    assert meta["NodeFiles"] == [f"atlas-{ATLAS}_seeds.tsv"]
    for key in ("RelationshipMeasure", "Description"):
        assert key in json.loads(group_file(out, SD_TSV.replace(".tsv", ".json")).read_text())


def test_missing_seeds_give_na(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids))
    mean = read_tsv(group_file(out, MEAN_TSV)).set_index(pd.Index(NAMES))
    sd = read_tsv(group_file(out, SD_TSV)).set_index(pd.Index(NAMES))
    # cereb: missing in every run -> no participant has its pairs
    assert mean.loc["cereb"].isna().all() and mean["cereb"].isna().all()
    # amyg: only sub-03 has it -> a mean from one participant, no sd
    others = [n for n in NAMES if n not in ("amyg", "cereb")]
    assert mean.loc["amyg", others].notna().all()
    assert sd.loc["amyg", others].isna().all()
    assert sd.loc["pcc", ["mpfc", "v1l", "v1r"]].notna().all()
    # the diagonal is not valid
    assert all(pd.isna(mean.loc[n, n]) and pd.isna(sd.loc[n, n]) for n in NAMES)
    text = group_file(out, MEAN_TSV).read_text()
    assert "n/a" in text and "nan" not in text.lower().replace("n/a", "")


def test_planted_pair_stands_out(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids))
    mean = read_tsv(group_file(out, MEAN_TSV)).to_numpy(float)
    i, j = (NAMES.index(n) for n in PLANTED)
    off = np.abs(mean[np.triu_indices(len(NAMES), 1)])
    off = off[np.isfinite(off)]
    assert mean[i, j] == pytest.approx(mean[j, i])
    assert mean[i, j] > 1.2  # r ~ 0.92 -> z ~ 1.6
    assert np.sort(off)[-2] < 0.5  # every other pair is near 0


def test_relmat_missing_is_computed_from_the_timeseries(tmp_path: Path) -> None:
    out, bids, runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids))
    reference = read_tsv(group_file(out, MEAN_TSV)).to_numpy(float)
    for r in runs:
        r.relmat_path(out).unlink()
    group.run(config_for(out, bids))
    again = read_tsv(group_file(out, MEAN_TSV)).to_numpy(float)
    np.testing.assert_allclose(again, reference, rtol=1e-5, atol=1e-6)
    meta = json.loads(group_file(out, MEAN_TSV.replace(".tsv", ".json")).read_text())
    assert all(s.endswith("_timeseries.tsv") for s in meta["Sources"])


def test_unreadable_files_exclude_the_run_not_the_group(tmp_path: Path) -> None:
    out, bids, runs = standard_dataset(tmp_path)
    runs[0].timeseries(out, ".json").write_text("{not json")
    runs[1].relmat_path(out).write_text("pcc\tmpfc\n1\t0.5\n")  # not square
    assert group.run(config_for(out, bids)) == 0
    table = read_tsv(group_file(out, RUNS_TSV)).set_index("timeseries")
    first = table.loc[runs[0].timeseries(out).relative_to(out).as_posix()]
    second = table.loc[runs[1].timeseries(out).relative_to(out).as_posix()]
    assert first["usable"] == "no" and "unreadable sidecar" in first["exclusion_reason"]
    assert second["usable"] == "no" and "not a square matrix" in second["exclusion_reason"]
    meta = json.loads(group_file(out, MEAN_TSV.replace(".tsv", ".json")).read_text())
    assert meta["NumberOfParticipants"] == 2  # sub-01 lost both runs


def test_strategies_and_seed_sets_are_summarized_apart(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    write_run(out, Run("01", 1, desc="scrubbing", seed=11))
    group.run(config_for(out, bids))
    other = read_tsv(group_file(out, f"atlas-{ATLAS}_desc-scrubbing_runs.tsv"))
    assert list(other["participant_id"]) == ["sub-01"]
    assert len(read_tsv(group_file(out, RUNS_TSV))) == 7
    group_file(out, f"atlas-{ATLAS}_meas-FisherZMean_desc-scrubbing_relmat.tsv")
    report = group_file(out, "report.html").read_text()
    assert f"atlas-{ATLAS}_desc-scrubbing" in report and f"atlas-{ATLAS}_desc-{DESC}" in report


def test_participant_label_restricts_the_group(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids, participant_label=("01", "02")))
    table = read_tsv(group_file(out, RUNS_TSV))
    assert set(table["participant_id"]) == {"sub-01", "sub-02"}


# --------------------------------------------------------------------------- errors, report


def test_nothing_to_summarize_is_exit_66_naming_the_path(tmp_path: Path) -> None:
    out, bids = tmp_path / "out", tmp_path / "bids"
    (out / "sub-01" / "func").mkdir(parents=True)
    bids.mkdir()
    (bids / "dataset_description.json").write_text("{}")
    with pytest.raises(MissingInputError, match=str(out)) as info:
        group.run(config_for(out, bids))
    assert info.value.exit_code == 66
    assert "\n" not in str(info.value)

    # through the command line, in its own process (the CLI configures logging globally)
    done = subprocess.run(
        [sys.executable, "-m", "bids_spheres", str(bids), str(out), "group"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 66, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert str(out) in last and "participant level" in last


def test_missing_participants_are_reported_and_logged(tmp_path: Path, caplog) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        group.run(config_for(out, bids))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sub-05" in w and "sub-06" in w and "sub-04" not in w for w in warnings)
    report = group_file(out, "report.html").read_text()
    start = report.index("id='missing-participants'")
    block = report[start : report.index("</div>", start)]
    assert "sub-05" in block and "sub-06" in block and "sub-01" not in block


def test_report_is_self_contained(tmp_path: Path) -> None:
    out, bids, runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids))
    text = group_file(out, "report.html").read_text()
    refs = _references(text)
    images = [r for r in refs if r.startswith("data:image/png;base64,")]
    assert len(images) >= 4  # seeds, connectome, motion, coverage
    external = [r for r in refs if not r.startswith(("data:", "#")) and ":" in r]
    assert not external, external
    relative = [r for r in refs if not r.startswith(("data:", "#"))]
    assert all((out / "group" / r).is_file() for r in relative), relative
    for banned in ("<script", "<link", "@import", "url("):
        assert banned not in text
    # the excluded runs are listed with their reasons
    assert "id='excluded-runs'" in text
    assert runs[5].timeseries(out).relative_to(out).as_posix() in text
    assert "kept volumes &lt; --min-volumes 50" in text


def test_report_escapes_names(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    table = out / f"atlas-{ATLAS}_seeds.tsv"
    table.write_text(table.read_text().replace("\tVisual", "\t<b>Vis&al</b>"))
    group.run(config_for(out, bids))
    text = group_file(out, "report.html").read_text()
    assert "<b>Vis" not in text


def test_template_background_is_used_only_when_local(tmp_path: Path) -> None:
    import nibabel as nib

    out, bids, _runs = standard_dataset(tmp_path)
    home = tmp_path / "tf"
    folder = home / f"tpl-{SPACE}"
    folder.mkdir(parents=True)
    name = f"tpl-{SPACE}_res-02_desc-brain_T1w.nii.gz"
    # a git-annex placeholder (broken link) is not a template
    (folder / name).symlink_to(home / "annexed-away")
    script = (
        "import sys; from pathlib import Path; from bids_spheres.app import group; "
        "from bids_spheres.app.config import RunConfig; out = Path(sys.argv[1]); "
        "group.run(RunConfig(bids_dir=Path(sys.argv[2]), output_dir=out, "
        "analysis_level='group', work_dir=out / '.work')); "
        "print('templateflow' in sys.modules)"
    )

    def report_with(env_home: Path | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "TEMPLATEFLOW_HOME"}
        if env_home is not None:
            env["TEMPLATEFLOW_HOME"] = str(env_home)
        done = subprocess.run(
            [sys.executable, "-c", script, str(out), str(bids)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "False"  # templateflow never imported
        return group_file(out, "report.html").read_text()

    assert "outline of the MNI152 brain" in report_with(None)
    assert "outline of the MNI152 brain" in report_with(home)
    (folder / name).unlink()
    grid = np.mgrid[-45:46, -63:46, -36:54].astype(np.float32) * 2
    brain = ((grid[0] / 70) ** 2 + ((grid[1] + 17) / 88) ** 2 + ((grid[2] - 14) / 64) ** 2) < 1
    data = (brain * (80 + 20 * np.random.default_rng(0).random(brain.shape))).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    nib.save(nib.Nifti1Image(data, affine), folder / name)
    text = report_with(home)
    assert f"local TemplateFlow image {name}" in text
    assert "outline of the MNI152 brain" not in text


def test_browser_renders_report_offline(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        message = "chromium is not installed (CI installs it: apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    out, bids, _runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids))
    report = group_file(out, "report.html")

    # negative control: the checks below catch a page that fetches and logs errors
    control = tmp_path / "control.html"
    control.write_text(
        "<html><body><img src='http://example.invalid/x.png'>"
        "<script>console.error('control-error')</script></body></html>"
    )
    dom, console, requested = _load_in_chromium(chromium, control, tmp_path / "control")
    assert any("control-error" in line for line in console), console
    assert requested == ["http://example.invalid/x.png"], requested

    dom, console, requested = _load_in_chromium(chromium, report, tmp_path / "report")
    assert "bids_spheres group report" in dom
    assert dom.count("<img") >= 4
    assert not console, console
    assert not requested, requested

    shot = tmp_path / "shot.png"
    shoot = subprocess.run(
        [*_chromium_flags(chromium, tmp_path / "shot-profile"), f"--screenshot={shot}",
         "--window-size=1100,2400", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert shoot.returncode == 0 and shot.is_file(), shoot.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1100)
    assert shot.stat().st_size > 50_000
    assert pixels.std() > 20  # not a blank page: text and figures were drawn
    assert (pixels < 100).mean() > 0.01


def _chromium_flags(chromium: str, profile: Path) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--hide-scrollbars",
        # the test never reaches the internet: no proxy, every host name unresolvable
        "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]


def _load_in_chromium(chromium: str, page: Path, work: Path) -> tuple[str, list[str], list[str]]:
    """DOM, console messages and page-initiated request URLs of ``page`` in headless Chromium."""
    work.mkdir()
    net_log = work / "net.json"
    done = subprocess.run(
        [*_chromium_flags(chromium, work / "profile"), f"--log-net-log={net_log}",
         "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console, _page_requests(net_log)


def _references(text: str) -> list[str]:
    refs: list[str] = []

    class Collect(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            refs.extend(v for k, v in attrs if k in ("src", "href", "srcset", "data") and v)

    Collect().feed(text)
    return refs


def _page_requests(path: Path) -> list[str]:
    """URLs the page asked for, from a Chromium net log (possibly unterminated JSON).

    Requests the browser makes for itself (update checks, network time) have the
    initiator "not an origin"; those of a file:// page have the initiator "null" or file.
    """
    text = path.read_text(errors="replace").rstrip().rstrip(",")
    try:
        log = json.loads(text)
    except ValueError:
        log = json.loads(text + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event.get("type") != start_job or "url" not in params:
            continue
        initiator = str(params.get("initiator", ""))
        if initiator == "null" or initiator.startswith("file:"):
            urls.append(params["url"])
    return list(dict.fromkeys(urls))


def test_session_task_and_run_restrict_the_group(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    group.run(config_for(out, bids, session_label=("ses-2",)))
    table = read_tsv(group_file(out, RUNS_TSV))
    assert list(zip(table["participant_id"], table["session_id"], strict=True)) == [
        ("sub-02", "ses-2")
    ]
    group.run(config_for(out, bids, run=("01",), task=("rest",)))  # run 1 matches run-1
    table = read_tsv(group_file(out, RUNS_TSV))
    assert len(table) == 5 and set(table["timeseries"].str.contains("_run-1_")) == {True}
    with pytest.raises(MissingInputError, match=r"for task\(s\) nback; run\(s\) 2"):
        group.run(config_for(out, bids, task=("nback",), run=("2",)))


def test_filtered_out_participants_are_not_reported_missing(tmp_path: Path, caplog) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        group.run(config_for(out, bids, session_label=("2",)))
    missing = [
        r.getMessage() for r in caplog.records if "no participant-level output" in r.message
    ]
    assert missing and missing[0].endswith("sub-05, sub-06")  # not sub-01/03/04: filtered out


def test_filter_runs_accepts_single_labels_and_refuses_bad_run_numbers(tmp_path: Path) -> None:
    out, _bids, _runs = standard_dataset(tmp_path)
    assert len(group.find_runs(out, "01", task="rest")) == 2  # a str is one label
    assert len(group.find_runs(out, run=2)) == 2
    with pytest.raises(UsageError, match="run 'a' is not a run number"):
        group.find_runs(out, run=("a",))


def test_unwritable_group_directory_is_an_output_error(tmp_path: Path) -> None:
    out, bids, _runs = standard_dataset(tmp_path)
    (out / "group").write_text("a file where the folder should be")
    with pytest.raises(OutputError, match=r"cannot create the group directory .*group") as info:
        group.run(config_for(out, bids))
    assert info.value.exit_code == 73
