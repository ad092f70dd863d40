"""Scaling benchmark: many small runs through the local pool and a Dask LocalCluster.

Builds an fMRIPrep-like tree of N small synthetic runs (one small BOLD file and
one confounds file, hard-linked under every run's name, so generation is
fast), then runs ``bids_spheres ... participant`` in a FRESH process for each
engine and size:

* ``pool``: ``--nprocs 2`` (a ProcessPoolExecutor on this machine);
* ``dask``: ``--dask-scheduler`` on a ``distributed.LocalCluster`` with 2
  single-threaded worker processes on loopback, started by this script;
* ``inline``: ``--nprocs 1`` on the smallest size, the per-run compute cost.

For each it prints runs/second, the overhead per run relative to inline
execution (wall/run x workers - inline cost/run), and the peak RSS of the
coordinating process (its own ``ru_maxrss``; workers excluded), which must
stay flat in N. Then it projects the cost of 40,000 runs of 490 volumes at
2.4 mm from the per-run cost measured by ``bench_masker.py`` (pass
``--per-run-seconds``; default: its 300-volume figure scaled to the grid and
length, see the README).

    python benchmarks/bench_scale.py                 # 500 and 2000 runs
    python benchmarks/bench_scale.py --sizes 200     # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (12, 14, 12)
AFFINE = np.array([[4.0, 0, 0, -24], [0, 4.0, 0, -28], [0, 0, 4.0, -24], [0, 0, 0, 1]])
N_VOL = 60
SEEDS = "name\tx\ty\tz\tradius\nA\t-8\t-8\t-8\t4\nB\t8\t8\t8\t4\nC\t-8\t8\t0\t4\nD\t8\t-8\t0\t4\n"


def build_tree(root: Path, n_runs: int) -> Path:
    """An fMRIPrep-like dataset with n_runs runs (10 runs per subject)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "scale",
                "BIDSVersion": "1.8.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}],
            }
        )
    )
    proto = root / "proto"
    proto.mkdir()
    data = (rng.standard_normal((*SHAPE, N_VOL)) * 10 + 1000).round().astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), proto / "bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE), proto / "mask.nii.gz")
    base = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter"]
    motion = rng.standard_normal((N_VOL, len(base))) * 0.1
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(base):
        deriv = np.r_[np.nan, np.diff(motion[:, j])]
        columns[name] = motion[:, j]
        columns[f"{name}_derivative1"] = deriv
        columns[f"{name}_power2"] = motion[:, j] ** 2
        columns[f"{name}_derivative1_power2"] = deriv**2
    columns["framewise_displacement"] = np.r_[np.nan, np.abs(rng.standard_normal(N_VOL - 1)) * 0.1]
    lines = ["\t".join(columns)]
    for t in range(N_VOL):
        lines.append(
            "\t".join("n/a" if np.isnan(c[t]) else f"{c[t]:.6f}" for c in columns.values())
        )
    (proto / "conf.tsv").write_text("\n".join(lines) + "\n")
    (proto / "bold.json").write_text(json.dumps({"RepetitionTime": 2.0, "SkullStripped": True}))
    for i in range(n_runs):
        sub, run = f"{i // 10 + 1:04d}", i % 10 + 1
        func = root / f"sub-{sub}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        stem = f"sub-{sub}_task-rest_run-{run}"
        space = f"{stem}_space-MNI152NLin2009cAsym"
        os.link(proto / "bold.nii.gz", func / f"{space}_desc-preproc_bold.nii.gz")
        os.link(proto / "bold.json", func / f"{space}_desc-preproc_bold.json")
        os.link(proto / "mask.nii.gz", func / f"{space}_desc-brain_mask.nii.gz")
        os.link(proto / "conf.tsv", func / f"{stem}_desc-confounds_timeseries.tsv")
    shutil.rmtree(proto)
    (root / "seeds.tsv").write_text(SEEDS)
    return root


CHILD = """
import json, resource, sys, time
from bids_spheres.app.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - t0
print(json.dumps({"code": code, "wall": wall,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_app(tree: Path, out: Path, *extra: str) -> dict:
    args = [
        str(tree),
        str(out),
        "participant",
        "--seeds",
        str(tree / "seeds.tsv"),
        "--denoise-strategy",
        "24p",
        "--mask",
        "none",
        "--min-coverage",
        "0",
        "-q",
        *extra,
    ]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False
    )
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    if done.returncode != 0 or result.get("code") != 0:
        raise SystemExit(f"bids_spheres failed: {done.stderr[-2000:]}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument(
        "--per-run-seconds",
        type=float,
        default=None,
        help="measured cost of one 490-volume 2.4 mm run (from bench_masker)",
    )
    args = parser.parse_args()
    from distributed import LocalCluster

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {n: build_tree(tmp / f"tree{n}", n) for n in args.sizes}
        smallest = min(args.sizes)
        inline = run_app(trees[smallest], tmp / "inline", "--nprocs", "1")
        inline_per_run = inline["wall"] / smallest
        rows.append(("inline (1 process)", smallest, inline))
        with LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        ) as cluster:
            for n in args.sizes:
                rows.append(
                    ("pool --nprocs 2", n, run_app(trees[n], tmp / f"pool{n}", "--nprocs", "2"))
                )
                rows.append(
                    (
                        "dask LocalCluster 2 workers",
                        n,
                        run_app(
                            trees[n],
                            tmp / f"dask{n}",
                            "--dask-scheduler",
                            cluster.scheduler_address,
                        ),
                    )
                )
    print(
        f"\n{N_VOL} volumes of {SHAPE} voxels per run, 4 seeds, strategy 24p; "
        f"{os.cpu_count()} cores\n"
    )
    print(
        f"{'engine':30s} {'runs':>6s} {'wall s':>8s} {'runs/s':>8s} "
        f"{'overhead/run ms':>16s} {'coordinator RSS MB':>19s}"
    )
    for name, n, r in rows:
        workers = 1 if name.startswith("inline") else 2
        overhead = (r["wall"] / n * workers - inline_per_run) * 1000
        print(
            f"{name:30s} {n:6d} {r['wall']:8.1f} {n / r['wall']:8.1f} {overhead:16.1f} "
            f"{r['rss_mb']:19.0f}"
        )
    if args.per_run_seconds:
        runs, cost = 40_000, args.per_run_seconds
        total = runs * (cost + max(0.0, inline_per_run))
        print(
            f"\nprojection: {runs} runs x ({cost:.2f} s compute + {inline_per_run:.2f} s "
            f"per-run overhead) = {total / 3600:.1f} core-hours"
        )
    print(
        f"\ncoordinator peak RSS of this script: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
