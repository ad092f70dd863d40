"""Benchmark of the group level: wall time and peak memory against the number of runs.

Builds synthetic participant-level outputs (one run per participant, the 264
power2011 seeds, as ``workflow._process`` writes them: timeseries TSV + JSON
sidecar, relmat TSV + JSON, the root seed table) in a temporary directory,
then runs :func:`bids_spheres.app.group.run` in a fresh Python process per size
and prints its wall time and peak resident memory (``ru_maxrss``). The group
level streams run by run, so peak memory should barely move between 250 and
1000 runs while time grows linearly.

To keep the temporary directory small, the runs share a pool of distinct
relmat and timeseries files through hard links (the group level reads each
relmat as a separate file; it does not read a timeseries when its relmat is
there); every run has its own sidecar (motion, kept volumes, missing seeds).

Usage::

    python benchmarks/bench_group.py               # 250 and 1000 runs
    python benchmarks/bench_group.py --runs 100 500 2000 --volumes 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bids_spheres.app import outputs, seeds

POOL = 24  # distinct relmat / timeseries files shared by hard links
ATLAS, DESC, SPACE = "power2011", "simple", "MNI152NLin2009cAsym"

_CHILD = """
import json, logging, resource, sys, time
t0 = time.perf_counter()
from bids_spheres.app import group, report
from bids_spheres.app.report import plotting
import matplotlib
from bids_spheres.app.config import RunConfig
from pathlib import Path
imported = time.perf_counter() - t0
rss_imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = Path(sys.argv[1])
config = RunConfig(bids_dir=out.parent / "bids", output_dir=out, analysis_level="group",
                   work_dir=out / ".work")
t1 = time.perf_counter()
if sys.argv[2] == "run":
    logging.getLogger("bids_spheres").setLevel(logging.ERROR)
    group.run(config)
wall = time.perf_counter() - t1
print(json.dumps({"import_s": imported, "group_s": wall,
                  "rss_imported_mb": rss_imported / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(out: Path, n_runs: int, n_volumes: int, rng: np.random.Generator) -> None:
    """Write ``n_runs`` participants' outputs (one run each) under ``out``."""
    seed_set = seeds.load("power2011", default_radius=5.0)
    names = list(seed_set.names)
    n = len(names)
    out.mkdir(parents=True)
    (out.parent / "bids").mkdir()
    outputs.write_seed_table(out, seed_set.to_dataframe(), seed_set.label, {"Space": "MNI152"})
    pool = out.parent / "pool"
    pool.mkdir()
    pool_missing: list[set[int]] = []
    for k in range(POOL):
        shared = rng.standard_normal((n_volumes, 1))
        table = rng.standard_normal((n_volumes, n)) + 0.3 * shared
        table[:, 0] = shared[:, 0] + 0.3 * rng.standard_normal(n_volumes)
        table[:, 1] = shared[:, 0] + 0.3 * rng.standard_normal(n_volumes)
        missing = rng.choice(n, size=k % 4, replace=False)
        pool_missing.append({int(j) for j in missing})
        table[:, missing] = np.nan
        ok = np.isfinite(table).all(axis=0)
        relmat = np.full((n, n), np.nan)
        relmat[np.ix_(ok, ok)] = np.corrcoef(table[:, ok], rowvar=False)
        outputs.write_tsv(pool / f"relmat{k}.tsv", pd.DataFrame(relmat, columns=names))
        outputs.write_tsv(pool / f"timeseries{k}.tsv", pd.DataFrame(table, columns=names))
    coords = seed_set.coords_mm
    for i in range(n_runs):
        sub = f"{i + 1:04d}"
        k = i % POOL
        func = out / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        stem = f"sub-{sub}_task-rest_run-1_space-{SPACE}_res-2_atlas-{ATLAS}"
        os.link(pool / f"timeseries{k}.tsv", func / f"{stem}_desc-{DESC}_timeseries.tsv")
        relmat = f"{stem}_meas-PearsonCorrelation_desc-{DESC}_relmat"
        os.link(pool / f"relmat{k}.tsv", func / f"{relmat}.tsv")
        (func / f"{relmat}.json").write_text("{}")
        relmat_missing = pool_missing[k]
        fd = np.abs(rng.normal(0, rng.uniform(0.05, 0.4), n_volumes))
        nonsteady = list(range(int(rng.integers(0, 4))))
        kept = [v for v in range(n_volumes) if v not in nonsteady]
        sidecar = {
            "SamplingFrequency": 0.5,
            "RepetitionTime": 2.0,
            "SeedSet": "power2011",
            "Space": SPACE,
            "Seeds": {
                name: _seed_entry(coords[j], seed_set.networks[j], j in relmat_missing, rng)
                for j, name in enumerate(names)
            },
            "MissingSeeds": [names[j] for j in sorted(relmat_missing)],
            "NumberOfVolumes": n_volumes,
            "KeptVolumes": kept,
            "NonSteadyStateVolumes": nonsteady,
            "ScrubbedVolumes": [],
            "MeanFramewiseDisplacement": float(fd.mean()),
            "MaxFramewiseDisplacement": float(fd.max()),
            "Denoising": {"strategy": DESC},
            "ParametersHash": "0" * 64,
        }
        (func / f"{stem}_desc-{DESC}_timeseries.json").write_text(json.dumps(sidecar))


def _seed_entry(
    xyz: np.ndarray, network: str | None, missing: bool, rng: np.random.Generator
) -> dict[str, object]:
    return {
        "CoordinatesMM": [float(v) for v in xyz],
        "RadiusMM": 5.0,
        "Network": network,
        "VoxelCount": 33,
        "Coverage": 0.3 if missing else round(float(rng.uniform(0.7, 1)), 4),
        "Status": "n/a: coverage below threshold" if missing else "ok",
        "TemporalSNR": None if missing else round(float(rng.uniform(20, 90)), 3),
    }


def measure(out: Path, what: str) -> dict[str, float]:
    """Run the group level (or only the imports) in a fresh process; return its figures."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), what],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - start
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--volumes", type=int, default=200)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_group_") as tmp:
        for n_runs in args.runs:
            out = Path(tmp) / f"n{n_runs}" / "out"
            t0 = time.perf_counter()
            build(out, n_runs, args.volumes, rng)
            built = time.perf_counter() - t0
            baseline = measure(out, "import")
            figures = measure(out, "run")
            report = out / "group" / "report.html"
            rows.append(
                {
                    "runs": n_runs,
                    "build_s": built,
                    "group_s": figures["group_s"],
                    "ms_per_run": 1000 * figures["group_s"] / n_runs,
                    "process_s": figures["process_s"],
                    "rss_after_imports_mb": baseline["peak_rss_mb"],
                    "peak_rss_mb": figures["peak_rss_mb"],
                    "report_kb": report.stat().st_size / 1024,
                }
            )
    print(f"group level, 264 seeds, {args.volumes} volumes, one run per participant")
    header = (
        f"{'runs':>6} {'group (s)':>10} {'ms/run':>7} {'process (s)':>12} "
        f"{'RSS imports (MB)':>17} {'peak RSS (MB)':>14} {'report (kB)':>12}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['runs']:>6} {r['group_s']:>10.2f} {r['ms_per_run']:>7.1f} "
            f"{r['process_s']:>12.2f} {r['rss_after_imports_mb']:>17.1f} "
            f"{r['peak_rss_mb']:>14.1f} {r['report_kb']:>12.0f}"
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"peak RSS {first['peak_rss_mb']:.1f} MB at {first['runs']} runs -> "
            f"{last['peak_rss_mb']:.1f} MB at {last['runs']} runs "
            f"({last['runs'] / first['runs']:.0f}x the runs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
