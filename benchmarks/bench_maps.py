"""Seed-to-voxel maps: bids_spheres.masker.seed_maps vs the nilearn route vs the I/O floor.

Usage
-----
    python benchmarks/bench_maps.py                      # data in a temp dir, 3 repetitions
    python benchmarks/bench_maps.py --data-dir /tmp/bm   # keep (and reuse) the data
    python benchmarks/bench_maps.py --quick              # smoke run: 60 volumes, 1 rep

What is measured
----------------
One 97 x 115 x 97 x 300 float32 ``.nii.gz`` (the generator of ``bench_masker.py``:
an in-brain ellipsoid of 283,000 voxels with slow oscillations, drift and noise),
its brain mask, 10 random seeds (r = 5 mm), 36 confounds and 12 censored volumes.
Two cleanings: ``confounds`` (detrend + 36 confounds + censoring: the low-rank
route) and ``band-pass`` (the same + 0.01-0.1 Hz Butterworth: the held route).

* ``floor``: stream-decompress the file with isal's fastest public reader into a
  reused one-volume buffer (what any reader must at least do);
* ``ours``: ``seed_maps`` (one pass; maps of the 10 seeds over the brain mask,
  and the sphere signals), in a fresh process: start-up and imports included;
* ``ours-warm``: the same, timed as the second run of a process that has just
  done one (what each run costs a BIDS-App worker after its first: libraries
  imported, the sphere geometry cached); compared with the floor's read loop;
* ``nilearn``: the route of nilearn's seed-based tutorial: ``NiftiMasker`` (mask,
  same cleaning, ``standardize=False``) for the voxels, ``NiftiSpheresMasker``
  (same cleaning) for the seeds, then Pearson r (a matrix product).

BLAS runs one thread per process on both sides (``--blas-threads``). Each measurement
runs in a fresh process (this script with ``--child``); GNU
time gives the peak RSS and the CPU time (user + system) of that process; wall
time is measured around it. Children find their bytecode in a private cache, filled by
one untimed import first (as an installed package has it; ``PYTHONDONTWRITEBYTECODE``
is dropped). Repetitions are interleaved. The machine may be
shared: CPU time minima are the robust figure (the wall time includes waiting
for a core), and the table prints both. The largest |r| difference between ours
and nilearn is printed (nilearn cleans a float32 image in float32 arithmetic).
"""

from __future__ import annotations

import json
import os
import sys
import time

_T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

N_SEEDS = 10
RADIUS = 5.0
CENSORED = (40, 41, 42, 90, 91, 150, 151, 152, 153, 200, 201, 202)
CLEANINGS = {
    "confounds": {"detrend": True},
    "band-pass": {"detrend": True, "high_pass": 0.01, "low_pass": 0.1, "t_r": 2.0},
}


def _child(spec: dict) -> None:
    result: dict = {}
    kind = spec["kind"]
    if kind == "floor":
        import bench_masker as bm
        from isal import igzip

        c0 = time.process_time()
        t0 = time.perf_counter()
        with igzip.open(spec["img"], "rb") as fh:
            bm._read_all(fh)
        result.update(t_work=time.perf_counter() - t0, c_work=time.process_time() - c0)
    elif kind == "generate":
        _generate(spec)
    else:
        import numpy as np

        seeds = np.load(spec["seeds"]).tolist()
        confounds = np.load(spec["confounds"])
        kept = np.setdiff1d(np.arange(confounds.shape[0]), CENSORED)
        cleaning = CLEANINGS[spec["cleaning"]]
        if kind == "ours-warm":  # one untimed run first, as a BIDS-App worker has done
            from bids_spheres.masker import NiftiSpheresMasker, seed_maps

            masker = NiftiSpheresMasker(
                seeds, radius=RADIUS, mask_img=spec["mask"], allow_overlap=True, **cleaning
            )
            seed_maps(masker.fit(), spec["img"], confounds, kept)
            del masker
        t0, c0 = time.perf_counter(), time.process_time()
        if kind in ("ours", "ours-warm"):
            from bids_spheres.masker import NiftiSpheresMasker, seed_maps

            masker = NiftiSpheresMasker(
                seeds, radius=RADIUS, mask_img=spec["mask"], allow_overlap=True, **cleaning
            )
            maps = seed_maps(masker.fit(), spec["img"], confounds, kept)
            r = maps.r
            result.update(method=maps.method, rank=maps.rank, held_mb=maps.held_bytes / 2**20)
        else:
            import warnings

            warnings.simplefilter("ignore")
            from nilearn.maskers import NiftiMasker, NiftiSpheresMasker

            voxels = NiftiMasker(spec["mask"], standardize=False, **cleaning).fit_transform(
                spec["img"], confounds=confounds, sample_mask=kept
            )
            seed_ts = NiftiSpheresMasker(
                seeds,
                radius=RADIUS,
                mask_img=spec["mask"],
                allow_overlap=True,
                standardize=False,
                **cleaning,
            ).fit_transform(spec["img"], confounds=confounds, sample_mask=kept)
            seed_ts = seed_ts - seed_ts.mean(axis=0)
            voxels = voxels - voxels.mean(axis=0)
            r = (seed_ts.T @ voxels) / np.outer(
                np.linalg.norm(seed_ts, axis=0), np.linalg.norm(voxels, axis=0)
            )
            # NiftiMasker orders the mask voxels in C order, ours in NIfTI (Fortran) order
            import nibabel as nib

            mask = np.asanyarray(nib.load(spec["mask"]).dataobj).astype(bool)
            ours = np.flatnonzero(mask.ravel(order="F"))
            c_index = np.ravel_multi_index(
                np.unravel_index(ours, mask.shape, order="F"), mask.shape
            )
            r = r[:, np.argsort(np.argsort(c_index))]
        result.update(t_work=time.perf_counter() - t0, c_work=time.process_time() - c0)
        if spec.get("out"):
            np.save(spec["out"], np.asarray(r, dtype=np.float32))
    result["t_since_start"] = time.perf_counter() - _T_START
    with open(spec["result"], "w") as fh:
        json.dump(result, fh)


def _generate(spec: dict) -> None:
    import bench_masker as bm
    import nibabel as nib
    import numpy as np

    files = _files(spec["data_dir"], spec["n_vol"])
    bm._write_bold(files["img"], spec["n_vol"])
    inside, _ = bm._brain_mask()
    mask = inside.reshape(bm.SHAPE, order="F").astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, np.asarray(bm.AFFINE)), files["mask"])
    np.save(files["confounds"], bm._confounds(spec["n_vol"]))
    np.save(files["seeds"], bm._random_seeds(N_SEEDS))


def _files(data_dir: str, n_vol: int) -> dict:
    return {
        "img": os.path.join(data_dir, f"bold_{n_vol}.nii.gz"),
        "mask": os.path.join(data_dir, "brain_mask.nii.gz"),
        "confounds": os.path.join(data_dir, f"confounds_{n_vol}.npy"),
        "seeds": os.path.join(data_dir, f"seeds_{N_SEEDS}.npy"),
    }


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(json.loads(sys.argv[2]))
    sys.exit(0)


# ==========================================================================
# parent side

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

_GNU_TIME = shutil.which("time", path="/usr/bin:/bin")
# Children compile bytecode into a private cache (as an installed package has it) instead
# of recompiling every module at each start when PYTHONDONTWRITEBYTECODE is set; the
# cache is filled by one untimed import before the measurements.
_DROP_ENV = ("BIDS_SPHERES_INFLATER", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
_CHILD_ENV: dict[str, str] = {}
_WARM_IMPORTS = (
    "import bench_masker, isal.igzip, nibabel, scipy.linalg, scipy.signal, "
    "scipy.interpolate, bids_spheres.masker, nilearn.maskers"
)


def _run(spec: dict, work: Path) -> dict:
    """One measurement in a fresh process: wall, CPU (user + sys) and peak RSS (GNU time)."""
    result_path, rss_path, err_path = work / "result.json", work / "rss.txt", work / "err.txt"
    for p in (result_path, rss_path):
        p.unlink(missing_ok=True)
    spec = dict(spec, result=str(result_path))
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(_CHILD_ENV)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    if _GNU_TIME:
        cmd = [_GNU_TIME, "-f", "%M %U %S", "-o", str(rss_path), *cmd]
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stderr=err, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['kind']} failed:\n{err_path.read_text()[-4000:]}")
    inner = json.loads(result_path.read_text())
    if _GNU_TIME:
        rss_kb, user, system = (float(v) for v in rss_path.read_text().split()[-3:])
        cpu = user + system
    else:  # pragma: no cover
        rss_kb, cpu = float("nan"), float("nan")
    return {"wall": wall, "cpu": cpu, "rss_mb": rss_kb / 1024.0, **inner}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="keep and reuse the generated data here")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of ours and floor")
    parser.add_argument("--nilearn-repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="60 volumes, 1 repetition")
    parser.add_argument(
        "--blas-threads",
        default="1",
        help="BLAS threads per process, both sides (default 1, as in the BIDS-App's workers; "
        "'default' leaves the library's choice: on a shared machine its idle threads spin "
        "and inflate the CPU time)",
    )
    parser.add_argument(
        "--nilearn-cleanings",
        nargs="*",
        default=["confounds"],
        choices=sorted(CLEANINGS),
        help="cleanings to run the nilearn route for (default confounds; its band-pass run "
        "takes many minutes)",
    )
    args = parser.parse_args(argv)
    if args.blas_threads != "default":
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            _CHILD_ENV[name] = str(args.blas_threads)
    n_vol = 60 if args.quick else 300
    repeats = 1 if args.quick else args.repeats
    tmp = tempfile.TemporaryDirectory(prefix="bench_maps_")
    work = Path(tmp.name)
    data_dir = args.data_dir or work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    files = _files(str(data_dir), n_vol)
    if not all(os.path.exists(p) for p in files.values()):
        t0 = time.perf_counter()
        _run({"kind": "generate", "data_dir": str(data_dir), "n_vol": n_vol}, work)
        print(f"generated the data in {time.perf_counter() - t0:.0f} s", flush=True)
    _CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(_CHILD_ENV)
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, "-c", _WARM_IMPORTS], env=env, cwd=here, check=True)
    print(
        f"load average {os.getloadavg()[0]:.2f} at start; BLAS threads: {args.blas_threads}",
        flush=True,
    )

    measures: dict[str, list[dict]] = {}
    outs: dict[str, Path] = {}

    def measure(kind: str, cleaning: str | None, rep: int) -> None:
        key = kind if cleaning is None else f"{kind} {cleaning}"
        spec = {"kind": kind, "img": files["img"], "mask": files["mask"]}
        spec.update(seeds=files["seeds"], confounds=files["confounds"], cleaning=cleaning)
        if cleaning is not None:
            outs[key] = work / f"{kind}_{cleaning}.npy"
            spec["out"] = str(outs[key])
        r = _run(spec, work)
        measures.setdefault(key, []).append(r)
        print(
            f"  {key:20s} rep {rep + 1}: wall {r['wall']:6.2f} s  cpu {r['cpu']:6.2f} s  "
            f"rss {r['rss_mb']:6.0f} MB",
            flush=True,
        )

    # ours and the floor first, interleaved; then nilearn (minutes per run), and the
    # table again after each nilearn measurement
    for rep in range(repeats):
        cases = [("floor", None)] + [(k, c) for c in CLEANINGS for k in ("ours", "ours-warm")]
        for kind, cleaning in cases:
            measure(kind, cleaning, rep)
    _report(measures, outs)
    for cleaning in args.nilearn_cleanings:
        for rep in range(args.nilearn_repeats):
            measure("nilearn", cleaning, rep)
        _report(measures, outs)
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    tmp.cleanup()
    return 0


def _report(measures: dict[str, list[dict]], outs: dict[str, Path]) -> None:
    """Two views per cleaning: the whole fresh process (start-up, imports and exit
    included) against the floor's whole process, and the warm run (a second run in a
    process that has run one: what each run costs a BIDS-App worker) against the
    floor's read loop alone. Wall times are medians, CPU times (user + system) minima."""
    import numpy as np

    def best(key: str, field: str) -> float:
        return min(m[field] for m in measures[key])

    def median(key: str, field: str) -> float:
        return statistics.median(m[field] for m in measures[key])

    fw, fc = median("floor", "wall"), best("floor", "cpu")
    rw, rc = median("floor", "t_work"), best("floor", "c_work")
    print()
    print(
        f"floor (isal igzip readinto): process wall {fw:.2f} s, cpu {fc:.2f} s; "
        f"read loop alone wall {rw:.2f} s, cpu {rc:.2f} s"
    )
    print(
        "| cleaning | route | ours process wall, cpu | / floor process | ours warm run wall, "
        "cpu | / floor read | nilearn process wall, cpu | nilearn / ours (process wall, "
        "cpu) | peak RSS ours / nilearn | max abs dr |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cleaning in CLEANINGS:
        ours, warm, theirs = (f"{k} {cleaning}" for k in ("ours", "ours-warm", "nilearn"))
        route = measures[ours][0]
        ow, oc = median(ours, "wall"), best(ours, "cpu")
        ww, wc = median(warm, "t_work"), best(warm, "c_work")
        row = (
            f"| {cleaning} | {route['method']} (held {route['held_mb']:.0f} MiB) "
            f"| {ow:.2f} s, {oc:.2f} s | {ow / fw:.2f}x, {oc / fc:.2f}x "
            f"| {ww:.2f} s, {wc:.2f} s | {ww / rw:.2f}x, {wc / rc:.2f}x "
        )
        rss = max(m["rss_mb"] for key in (ours, warm) for m in measures[key])
        if theirs not in measures:
            print(row + f"| - | - | {rss:.0f} / - MB | - |")
            continue
        nw, nc = median(theirs, "wall"), best(theirs, "cpu")
        diff = float(np.nanmax(np.abs(np.load(outs[ours]) - np.load(outs[theirs]))))
        nrss = max(m["rss_mb"] for m in measures[theirs])
        print(
            row + f"| {nw:.1f} s, {nc:.1f} s | {nw / ow:.1f}x, {nc / oc:.1f}x "
            f"| {rss:.0f} / {nrss:.0f} MB | {diff:.1e} |"
        )


if __name__ == "__main__":
    sys.exit(main())
