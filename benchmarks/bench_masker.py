"""Side-by-side wall time and peak memory: our NiftiSpheresMasker vs nilearn's vs the I/O floor.

Usage
-----
    python benchmarks/bench_masker.py                      # full run, data in a temp dir
    python benchmarks/bench_masker.py --data-dir /tmp/bd   # keep (and reuse) the data
    python benchmarks/bench_masker.py --quick              # smoke run: 40 / 80 volumes, 1 rep

What is measured
----------------
Every measurement runs in a FRESH Python process (this script with ``--child``),
so imports, page-cache state and memory are those a user sees. The parent
records the child's wall time (``time.perf_counter`` around spawn + wait) and
its peak resident set size from the kernel (``os.wait4`` rusage of that one
child, ``ru_maxrss``). The child also reports its own import time and the
time of the work alone (``fit_transform`` or the read loop), so import
overhead can be told apart. Repetitions are interleaved (rep 1 of every
measurement, then rep 2, ...), with the order of measurements rotated each
repetition; the table shows medians.

The "floor" is the least any extractor must do: stream-decompress the same
file with the fastest public reader of the same inflater into a reused buffer
of one volume (``isal.igzip.open(path).readinto``; ``gzip.open`` for the
standard library), no voxel extraction; for an uncompressed .nii it is a plain
sequential read. ``floor-isal-threaded`` (``isal.igzip_threaded.open(path,
threads=1)``, the reader ours uses) is shown for reference.

``ours-warm`` (case a) times the second ``fit_transform`` of a process that has
just done one with another masker (seeds 1 mm off, so the geometry is computed
afresh): what each run costs a BIDS-App worker (or a script looping over runs)
after its first, with the libraries imported. Its work is compared with the
floor's read loop (and with nilearn's work in a fresh process); the fresh
process (``ours``) shows the one-off start-up, reported beside it.

Data (deterministic, generated once per ``--data-dir``): the MNI152NLin2009cAsym
2 mm grid (97 x 115 x 97), float32, an in-brain ellipsoid holding a
~1000 baseline, slow oscillations, a linear drift and Gaussian noise, zeros
outside; written by nibabel with its default gzip level; 300 and 1200
volumes; an uncompressed .nii copy of the 300-volume file; 36 confounds.
"""

from __future__ import annotations

import json
import os
import sys
import time

_T_START = time.perf_counter()

SHAPE = (97, 115, 97)
AFFINE = [[2.0, 0.0, 0.0, -96.0], [0.0, 2.0, 0.0, -132.0], [0.0, 0.0, 2.0, -78.0], [0, 0, 0, 1]]
T_R = 2.0
SEED = 20240611
# The "brain": an ellipsoid in mm (centre, semi-axes) holding every Power seed.
BRAIN_CENTRE = (0.0, -18.0, 10.0)
BRAIN_AXES = (72.0, 98.0, 76.0)
BLOCK = 8 * 1024 * 1024
FLOOR_BUFFER = SHAPE[0] * SHAPE[1] * SHAPE[2] * 4  # one float32 volume (4.3 MB)
DATA_VERSION = 1


# ==========================================================================
# child side: keep imports inside the functions so that each child pays
# only for what its own measurement needs


def _child(spec: dict) -> None:
    kind = spec["kind"]
    result: dict = {}
    if kind == "floor":
        t0 = time.perf_counter()
        if spec["inflater"] == "isal":
            from isal import igzip as gz
        else:
            import gzip as gz
        t1, c1 = time.perf_counter(), time.process_time()
        with gz.open(spec["img"], "rb") as fh:
            total = _read_all(fh)
        result.update(t_import=t1 - t0, t_work=time.perf_counter() - t1, bytes=total)
        result["c_work"] = time.process_time() - c1
    elif kind == "floor-threaded":
        # isal's public threaded reader (inflates in a thread of its own), the one
        # bids_spheres.masker.reading uses; shown for reference, not the floor.
        t0 = time.perf_counter()
        from isal import igzip_threaded

        t1, c1 = time.perf_counter(), time.process_time()
        with igzip_threaded.open(spec["img"], "rb", threads=1) as fh:
            total = _read_all(fh)
        result.update(t_import=t1 - t0, t_work=time.perf_counter() - t1, bytes=total)
        result["c_work"] = time.process_time() - c1
    elif kind == "read":
        t1, c1 = time.perf_counter(), time.process_time()
        with open(spec["img"], "rb", buffering=0) as fh:
            total = _read_all(fh)
        result.update(t_import=0.0, t_work=time.perf_counter() - t1, bytes=total)
        result["c_work"] = time.process_time() - c1
    elif kind == "import":
        t0 = time.perf_counter()
        exec(spec["code"], {})
        result.update(t_import=time.perf_counter() - t0, t_work=0.0)
    elif kind == "geometry":
        result.update(_child_geometry(spec))
    elif kind == "versions":
        import isal
        import nibabel
        import nilearn
        import numpy
        import scipy

        import bids_spheres

        print(
            f"numpy {numpy.__version__}, scipy {scipy.__version__}, nibabel "
            f"{nibabel.__version__}, isal {isal.__version__}, nilearn {nilearn.__version__}, "
            f"bids_spheres {bids_spheres.__version__}",
            file=sys.stderr,
            flush=True,
        )
        result.update(t_import=0.0, t_work=0.0)
    elif kind == "generate":
        result.update(_child_generate(spec))
    elif kind in ("ours", "nilearn"):
        result.update(_child_masker(spec))
    else:  # pragma: no cover
        raise SystemExit(f"unknown child kind {kind!r}")
    result["t_since_start"] = time.perf_counter() - _T_START
    result["vm_hwm_kb"] = _vm_hwm_kb()
    with open(spec["result"], "w") as fh:
        json.dump(result, fh)


def _read_all(fh) -> int:
    """readinto one reused buffer (one volume's bytes) until the end; return the byte count."""
    buf = bytearray(FLOOR_BUFFER)
    view = memoryview(buf)
    total = 0
    while True:
        n = fh.readinto(view)
        if not n:
            return total
        total += n


def _vm_hwm_kb() -> float:
    """Peak resident set size of this process so far (kernel's VmHWM), in KiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return float("nan")


def _child_masker(spec: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np

    if spec["kind"] == "ours":
        from bids_spheres.masker.estimator import NiftiSpheresMasker
    else:
        import warnings

        warnings.simplefilter("ignore")
        from nilearn.maskers import NiftiSpheresMasker
    t1 = time.perf_counter()
    seeds = np.load(spec["seeds"]).tolist()
    confounds = np.load(spec["confounds"]) if spec.get("confounds") else None
    if spec.get("warm"):
        # one untimed run first, as a BIDS-App worker (or a notebook) has done before its
        # next run: libraries imported. Its seeds are 1 mm off, so the timed run computes
        # its sphere geometry afresh, as the app's next run does with that run's own mask.
        shifted = [[x + 1.0, y, z] for x, y, z in seeds]
        first = NiftiSpheresMasker(shifted, **spec["params"])
        first.fit_transform(spec["img"], confounds=confounds)
        del first
    masker = NiftiSpheresMasker(seeds, **spec["params"])
    if spec.get("profile"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    t2, c2 = time.perf_counter(), time.process_time()
    out = masker.fit_transform(spec["img"], confounds=confounds)
    t3, c3 = time.perf_counter(), time.process_time()
    if spec.get("profile"):
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    if spec.get("out"):
        np.save(spec["out"], np.asarray(out))
    return {
        "t_import": t1 - t0,
        "t_work": t3 - t2,
        "c_work": c3 - c2,
        "shape": list(np.shape(out)),
    }


def _child_geometry(spec: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np

    from bids_spheres.masker import geometry as spheres

    t1 = time.perf_counter()
    seeds = np.load(spec["seeds"])
    radii = np.full(len(seeds), float(spec["radius"]))
    affine = np.asarray(AFFINE)
    times = []
    for _ in range(spec["inner"]):
        spheres._cache.clear()  # a fresh cache: compute, do not look up
        ta = time.perf_counter()
        geometry = spheres.membership(seeds, radii, affine, SHAPE)
        geometry.mean_weights()
        times.append(time.perf_counter() - ta)
    return {
        "t_import": t1 - t0,
        "t_work": float(np.median(times)),
        "t_first": times[0],
        "n_voxels": int(geometry.voxels.size),
    }


# ---------------------------------------------------------------- data (child side)


def _brain_mask():
    import numpy as np

    affine = np.asarray(AFFINE)
    ijk = np.indices(SHAPE, dtype=np.float64).reshape(3, -1, order="F")  # Fortran order
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    d = sum(((xyz[a] - BRAIN_CENTRE[a]) / BRAIN_AXES[a]) ** 2 for a in range(3))
    return d <= 1.0, xyz  # flat (Fortran order) mask and world coordinates


def _write_bold(path: str, n_vol: int) -> None:
    """One 4D float32 image; volume t depends only on (SEED, t), so the 300-volume file
    holds the first 300 volumes of the 1200-volume one."""
    import nibabel as nib
    import numpy as np

    inside, xyz = _brain_mask()
    xyz_in = (xyz[:, inside] - np.asarray(BRAIN_CENTRE)[:, None]) / np.asarray(BRAIN_AXES)[:, None]
    n_in = int(inside.sum())
    rng = np.random.default_rng([SEED, 0])
    # Baseline ~1000 with smooth spatial variation (tissue contrast, bias field).
    base = 1000.0 + 80.0 * np.sin(3.0 * xyz_in[0]) * np.cos(2.0 * xyz_in[1]) + 40.0 * xyz_in[2]
    # Slow "network" oscillations with smooth spatial loadings, and a drift.
    k = 8
    freqs = rng.uniform(0.004, 0.2, k)
    phases = rng.uniform(0.0, 2.0 * np.pi, k)
    centres = rng.uniform(-0.8, 0.8, (k, 3))
    loadings = np.stack(
        [12.0 * np.exp(-np.sum((xyz_in.T - c) ** 2, axis=1) / 0.15) for c in centres], axis=1
    ).astype(np.float32)  # (n_in, k)
    drift = rng.normal(0.0, 0.02, n_in).astype(np.float32)
    base = base.astype(np.float32)
    data = np.zeros((*SHAPE, n_vol), dtype=np.float32, order="F")
    flat = data.reshape(-1, n_vol, order="F")  # a view (Fortran order)
    assert np.shares_memory(flat, data)
    where = np.flatnonzero(inside)
    for t in range(n_vol):
        noise = np.random.default_rng([SEED, 1, t]).standard_normal(n_in, dtype=np.float32)
        s = np.sin(2.0 * np.pi * freqs * t * T_R + phases).astype(np.float32)
        vol = base + loadings @ s + drift * np.float32(t) + np.float32(15.0) * noise
        flat[where, t] = vol
    img = nib.Nifti1Image(data, np.asarray(AFFINE))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = T_R
    head, name = os.path.split(path)
    tmp = os.path.join(head, ".part-" + name)  # same extension: nibabel picks the format
    nib.save(img, tmp)
    os.replace(tmp, path)


def _confounds(n_vol: int):
    """36 columns in the fMRIPrep 36P layout: 9 base series, derivatives, squares."""
    import numpy as np

    rng = np.random.default_rng([SEED, 2])
    walk = np.cumsum(rng.normal(0.0, 0.05, (n_vol, 9)), axis=0)
    t = np.arange(n_vol) * T_R
    walk += 0.3 * np.sin(2 * np.pi * rng.uniform(0.01, 0.2, 9) * t[:, None])
    deriv = np.vstack([np.zeros((1, 9)), np.diff(walk, axis=0)])
    base = np.hstack([walk, deriv])
    return np.hstack([base, base**2])


def _random_seeds(n: int):
    """n seeds uniform in the brain ellipsoid shrunk by 6 mm (each sphere in the brain)."""
    import numpy as np

    rng = np.random.default_rng([SEED, 3])
    axes = np.asarray(BRAIN_AXES) - 6.0
    out = []
    while len(out) < n:
        p = rng.uniform(-1.0, 1.0, 3)
        if p @ p <= 1.0:
            out.append(np.asarray(BRAIN_CENTRE) + p * axes)
    return np.round(np.asarray(out), 2)


def _data_files(data_dir, n_short: int, n_long: int) -> dict:
    d = os.fspath(data_dir)
    return {
        "short_gz": os.path.join(d, f"bold_{n_short}.nii.gz"),
        "long_gz": os.path.join(d, f"bold_{n_long}.nii.gz"),
        "short_nii": os.path.join(d, f"bold_{n_short}.nii"),
        "conf_short": os.path.join(d, f"confounds_{n_short}.npy"),
        "conf_long": os.path.join(d, f"confounds_{n_long}.npy"),
        "power": os.path.join(d, "seeds_power2011.npy"),
        "random": os.path.join(d, "seeds_random1000.npy"),
    }


def _child_generate(spec: dict) -> dict:
    import gzip
    import shutil

    import numpy as np

    from bids_spheres.app import seeds as seeds_mod

    n_short, n_long = spec["n_short"], spec["n_long"]
    files = _data_files(spec["data_dir"], n_short, n_long)
    for key, n in (("short_gz", n_short), ("long_gz", n_long)):
        t0 = time.perf_counter()
        _write_bold(files[key], n)
        size = os.path.getsize(files[key]) / 2**20
        print(
            f"wrote {files[key]} ({size:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    with gzip.open(files["short_gz"], "rb") as src, open(files["short_nii"], "wb") as dst:
        shutil.copyfileobj(src, dst, BLOCK)
    np.save(files["conf_short"], _confounds(n_short))
    np.save(files["conf_long"], _confounds(n_long))
    np.save(files["power"], seeds_mod.load("power2011").coords_mm)
    np.save(files["random"], _random_seeds(1000))
    return {"t_import": 0.0, "t_work": time.perf_counter() - _T_START}


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
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

_GNU_TIME = shutil.which("time", path="/usr/bin:/bin")
# Children compile bytecode into a private cache (as an installed package would have
# it) instead of recompiling every module at each start when PYTHONDONTWRITEBYTECODE
# is set; BIDS_SPHERES_INFLATER is set only where a measurement asks for it.
_DROP_ENV = ("BIDS_SPHERES_INFLATER", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
_CHILD_ENV: dict[str, str] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where to generate (or reuse) the data; default: a temp dir, removed",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 40 and 80 volumes, 1 repetition"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="repetitions of every measurement except nilearn's (default 5)",
    )
    parser.add_argument(
        "--nilearn-repeats",
        type=int,
        default=3,
        help="repetitions of nilearn on cases a-d and f (default 3; ~30-80 s each)",
    )
    parser.add_argument(
        "--nilearn-long-repeats",
        type=int,
        default=1,
        help="repetitions of nilearn on the long run, case e (default 1; "
        "it takes ~2 min and ~10 GB each)",
    )
    parser.add_argument(
        "--nilearn-smoothing-repeats",
        type=int,
        default=1,
        help="repetitions of nilearn with smoothing_fwhm=6, case g (default 1; 0 skips it)",
    )
    parser.add_argument(
        "--cases", default="abcdefgh", help="subset of the cases a-h to run (default: all)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run ours once per case under cProfile (printed, not timed)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every raw measurement here")
    return parser


def prepare_data(data_dir: Path, n_short: int, n_long: int, work: Path) -> dict[str, str]:
    """Generate the data in a child process (keeps this process small), or reuse it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    files = _data_files(data_dir, n_short, n_long)
    manifest = data_dir / "manifest.json"
    want = {"version": DATA_VERSION, "seed": SEED, "n_short": n_short, "n_long": n_long}
    if (
        manifest.exists()
        and json.loads(manifest.read_text()) == want
        and all(os.path.exists(p) for p in files.values())
    ):
        print(f"reusing the data in {data_dir}", flush=True)
        return files
    manifest.unlink(missing_ok=True)
    spec = {"kind": "generate", "data_dir": str(data_dir), "n_short": n_short, "n_long": n_long}
    r = _run_child(spec, {}, work, show_stderr=True)
    print(f"generated the data in {r['wall']:.0f} s (peak RSS {r['rss_mb']:.0f} MB)", flush=True)
    manifest.write_text(json.dumps(want))
    return files


# ------------------------------------------------------------ measurements


@dataclass
class Measure:
    case: str
    label: str
    spec: dict
    env: dict = field(default_factory=dict)
    repeats: int | None = None  # None: the global --repeats
    runs: list = field(default_factory=list)


def _run_child(spec: dict, env_extra: dict, work: Path, show_stderr: bool = False) -> dict:
    """Run one measurement in a fresh process; return its wall time, peak RSS and report.

    Peak RSS comes from GNU time (``%M``, the kernel's ru_maxrss of the child, which
    time forks from its own small process). ru_maxrss of a child forked straight
    from this Python process would start at this process's high-water mark, since
    Linux carries the parent's peak across fork + exec. Without /usr/bin/time the
    child's own VmHWM (/proc/self/status) is used.
    """
    result_path = work / "result.json"
    rss_path = work / "rss.txt"
    err_path = work / "stderr.txt"
    for p in (result_path, rss_path):
        p.unlink(missing_ok=True)
    spec = dict(spec, result=str(result_path))
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(_CHILD_ENV)
    env.update(env_extra)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    if _GNU_TIME:
        cmd = [_GNU_TIME, "-f", "%M %U %S", "-o", str(rss_path), *cmd]
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stderr=None if show_stderr else err, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"child {spec['kind']} failed ({proc.returncode}):\n"
            + err_path.read_text(errors="replace")[-5000:]
        )
    inner = json.loads(result_path.read_text())
    if _GNU_TIME:
        rss_kb, user, system = (float(v) for v in rss_path.read_text().split()[-3:])
        cpu = user + system
    else:
        rss_kb, cpu = inner["vm_hwm_kb"], float("nan")
    return {"wall": wall, "cpu": cpu, "rss_mb": rss_kb / 1024.0, **inner}


def build_measures(files: dict[str, Path], args: argparse.Namespace, out_dir: Path) -> list:
    short_gz, long_gz, short_nii = (str(files[k]) for k in ("short_gz", "long_gz", "short_nii"))
    power, random1000 = str(files["power"]), str(files["random"])
    r5 = {"radius": 5.0}
    cleaning = {
        "radius": 5.0,
        "detrend": True,
        "low_pass": 0.1,
        "high_pass": 0.01,
        "t_r": T_R,
        "standardize": "zscore_sample",
    }
    ms: list[Measure] = []

    def masker(case, label, img, seeds, params, confounds=None, env=None, repeats=None):
        kind = label.split("-")[0].split(" ")[0]
        out = out_dir / f"{case}_{label.replace(' ', '_')}.npy"
        spec = {
            "kind": kind,
            "img": img,
            "seeds": seeds,
            "params": params,
            "confounds": confounds,
            "out": str(out),
            "warm": label == "ours-warm",
        }
        ms.append(Measure(case, label, spec, env or {}, repeats))

    def floor(case, img, inflater="isal"):
        ms.append(
            Measure(case, f"floor-{inflater}", {"kind": "floor", "img": img, "inflater": inflater})
        )

    cases = set(args.cases)
    nl = args.nilearn_repeats
    if "a" in cases:
        masker("a", "ours", short_gz, power, r5)
        masker("a", "ours-warm", short_gz, power, r5)
        masker("a", "nilearn", short_gz, power, r5, repeats=nl)
        floor("a", short_gz)
        ms.append(Measure("a", "floor-isal-threaded", {"kind": "floor-threaded", "img": short_gz}))
        # the same with the standard-library inflater
        masker("a", "ours-stdlib", short_gz, power, r5, env={"BIDS_SPHERES_INFLATER": "stdlib"})
        floor("a", short_gz, "stdlib")
    if "b" in cases:
        conf = str(files["conf_short"])
        masker("b", "ours", short_gz, power, cleaning, confounds=conf)
        masker("b", "nilearn", short_gz, power, cleaning, confounds=conf, repeats=nl)
    if "c" in cases:
        p = {"radius": 5.0, "allow_overlap": True}
        masker("c", "ours", short_gz, random1000, p)
        masker("c", "nilearn", short_gz, random1000, p, repeats=nl)
    if "d" in cases:
        masker("d", "ours", short_gz, power, {"radius": None})
        masker("d", "nilearn", short_gz, power, {"radius": None}, repeats=nl)
    if "e" in cases:
        masker("e", "ours", long_gz, power, r5)
        masker("e", "nilearn", long_gz, power, r5, repeats=args.nilearn_long_repeats)
        floor("e", long_gz)
    if "f" in cases:
        masker("f", "ours", short_nii, power, r5)
        masker("f", "nilearn", short_nii, power, r5, repeats=nl)
        ms.append(Measure("f", "read", {"kind": "read", "img": short_nii}))
    if "g" in cases:
        masker("g", "ours", short_gz, power, {"radius": 5.0, "smoothing_fwhm": 6.0})
        if "a" not in cases:
            masker("g", "ours-nosmooth", short_gz, power, r5)
        if args.nilearn_smoothing_repeats > 0:
            masker(
                "g",
                "nilearn",
                short_gz,
                power,
                {"radius": 5.0, "smoothing_fwhm": 6.0},
                repeats=args.nilearn_smoothing_repeats,
            )
    if "h" in cases:
        ms.append(
            Measure(
                "h",
                "geometry-1000",
                {"kind": "geometry", "seeds": random1000, "radius": 5.0, "inner": 5},
            )
        )
        ms.append(
            Measure(
                "h",
                "geometry-power",
                {"kind": "geometry", "seeds": power, "radius": 5.0, "inner": 5},
            )
        )
    # import overhead, process start-up included (reported apart, not a case)
    for label, code in (
        ("python", "pass"),
        ("isal.igzip", "import isal.igzip"),
        ("numpy", "import numpy"),
        ("nibabel", "import nibabel"),
        ("scipy.sparse", "import scipy.sparse"),
        ("pandas", "import pandas"),
        ("scipy.signal", "import scipy.signal"),
        ("bids_spheres.masker.reading", "import bids_spheres.masker.reading"),
        ("bids_spheres.masker.geometry", "import bids_spheres.masker.geometry"),
        ("bids_spheres.masker.signal", "import bids_spheres.masker.signal"),
        ("bids_spheres.masker.estimator", "import bids_spheres.masker.estimator"),
        ("nilearn.maskers", "import nilearn.maskers"),
    ):
        ms.append(Measure("import", label, {"kind": "import", "code": code}))
    return ms


def run_all(ms: list[Measure], repeats: int, work: Path) -> None:
    plan = []
    for rep in range(max([repeats] + [m.repeats or 0 for m in ms])):
        todo = [m for m in ms if rep < (m.repeats if m.repeats is not None else repeats)]
        # rotate the order every repetition so no measurement always follows the same one
        shift = (rep * 3) % max(len(todo), 1)
        plan.append(todo[shift:] + todo[:shift])
    total = sum(len(p) for p in plan)
    done = 0
    t_begin = time.perf_counter()
    for rep, todo in enumerate(plan):
        for m in todo:
            spec = dict(m.spec)
            if rep > 0:
                spec.pop("out", None)  # outputs are saved once (first repetition)
            r = _run_child(spec, m.env, work)
            m.runs.append(r)
            done += 1
            print(
                f"[{done:3d}/{total}] rep {rep + 1} {m.case} {m.label:<22} "
                f"wall {r['wall']:7.2f} s  cpu {r['cpu']:7.2f} s  work {r['t_work']:7.3f} s  "
                f"rss {r['rss_mb']:7.0f} MB   (elapsed {time.perf_counter() - t_begin:5.0f} s)",
                flush=True,
            )


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:  # pragma: no cover
        return "unknown"


def warm_cache(paths: list[str]) -> None:
    """Read every data file once so the first timed run does not pay for the disk."""
    buf = bytearray(BLOCK)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


# ---------------------------------------------------------------- reporting


def _med(m: Measure | None, key: str) -> float:
    if m is None or not m.runs:
        return float("nan")
    return statistics.median(r.get(key, float("nan")) for r in m.runs)


def _maxdiff(a: Path, b: Path) -> tuple[float, float]:
    import numpy as np

    if not (a.exists() and b.exists()):
        return float("nan"), float("nan")
    x = np.load(a).astype(np.float64)
    y = np.load(b).astype(np.float64)
    if x.shape != y.shape:
        return float("inf"), float("inf")
    d = np.abs(x - y)
    return float(d.max()), float(np.abs(y).max())


# whole process: wall, CPU (user+sys); the work alone: wall, CPU (process_time)
KEYS = ("wall", "cpu", "t_work", "c_work")


def _ratios(num: Measure | None, den: Measure | None) -> tuple[float, ...]:
    return tuple(_med(num, k) / _med(den, k) for k in KEYS)


def _fmt(r: tuple[float, ...], digits: int = 2) -> str:
    return "/".join(f"{x:.{digits}f}" for x in r)


def report(ms: list[Measure], out_dir: Path, n_short: int, n_long: int) -> list[tuple]:
    by = {(m.case, m.label): m for m in ms}
    names = {
        "a": f"(a) {n_short} vols gz, power264 r=5, no cleaning",
        "b": f"(b) {n_short} vols gz, r=5, detrend, 0.01-0.1 Hz, 36 confounds, zscore_sample",
        "c": f"(c) {n_short} vols gz, 1000 random in-brain seeds r=5, allow_overlap",
        "d": f"(d) {n_short} vols gz, power264, radius None",
        "e": f"(e) {n_long} vols gz, power264 r=5",
        "f": f"(f) {n_short} vols uncompressed .nii, power264 r=5",
        "g": f"(g) {n_short} vols gz, power264 r=5, smoothing_fwhm=6",
        "h": "(h) sphere geometry alone (membership + mean_weights, fresh cache, in-process)",
        "import": "import overhead (fresh process, interpreter start-up included)",
    }
    print()
    print(
        "Medians over repetitions. wall / cpu = the child process's wall time / user+sys CPU\n"
        "time (start-up + imports + work); work / wcpu = fit_transform (or the read loop) alone,\n"
        "wall / CPU time, timed inside the child; import = the child's imports (wall); rss =\n"
        "the child's peak RSS (kernel). Ratios are wall/cpu/work/wcpu. /floor: ours over the\n"
        "floor of the same file (a's floor for b, c, d, g); nl/ours: nilearn over ours;\n"
        "maxdiff: max |ours - nilearn| (in brackets: max |nilearn|)."
    )
    hdr = (
        f"{'measurement':<21}{'n':>2}{'wall s':>8}{'cpu s':>7}{'work s':>8}{'wcpu s':>8}"
        f"{'import':>7}{'rss MB':>7} {'/floor':>20} {'nl/ours':>20} {'maxdiff':>18}"
    )
    for case in ["a", "b", "c", "d", "e", "f", "g", "h", "import"]:
        rows = [m for m in ms if m.case == case]
        if not rows:
            continue
        print()
        print(names[case])
        print(hdr)
        floor_m = by.get((case, "floor-isal")) or by.get((case, "read"))
        if floor_m is None and case in "bcdg":
            floor_m = by.get(("a", "floor-isal"))
        for m in rows:
            ratio_floor = ratio_nl = diff = ""
            if m.label == "ours-stdlib":
                ratio_floor = _fmt(_ratios(m, by.get((case, "floor-stdlib"))))
            elif m.label == "ours-warm":  # its process holds two runs: only the work compares
                ratio_floor = "-/-/" + _fmt(_ratios(m, floor_m)[2:])
            elif m.label.startswith("ours") or m.label == "floor-isal-threaded":
                ratio_floor = _fmt(_ratios(m, floor_m))
            if m.label.startswith("ours") and (case, "nilearn") in by:
                ratio_nl = _fmt(_ratios(by[(case, "nilearn")], m), 1)
                if m.label == "ours-warm":  # nilearn's work in a fresh process over ours warm
                    ratio_nl = "-/-/" + _fmt(_ratios(by[(case, "nilearn")], m)[2:], 1)
                d, scale = _maxdiff(
                    out_dir / f"{case}_{m.label}.npy", out_dir / f"{case}_nilearn.npy"
                )
                diff = f"{d:.3g} ({scale:.3g})"
            print(
                f"{m.label:<21}{len(m.runs):>2}{_med(m, 'wall'):>8.3f}{_med(m, 'cpu'):>7.2f}"
                f"{_med(m, 't_work'):>8.3f}{_med(m, 'c_work'):>8.3f}{_med(m, 't_import'):>7.3f}"
                f"{_med(m, 'rss_mb'):>7.0f} {ratio_floor:>20} {ratio_nl:>20} {diff:>18}"
            )
        if case == "g":
            base = by.get(("a", "ours")) or by.get(("g", "ours-nosmooth"))
            if base is not None and ("g", "ours") in by:
                cost = _fmt(_ratios(by[("g", "ours")], base))
                print(f"smoothing cost: ours with / ours without smoothing = {cost}")
        if case == "h":
            for m in rows:
                print(
                    f"{m.label}: first call {_med(m, 't_first'):.3f} s, "
                    f"{int(_med(m, 'n_voxels'))} voxels in all spheres"
                )
    return targets(by)


def targets(by: dict) -> list[tuple]:
    """(name, [(basis, value text, met)]) for every target of issue 4."""
    out: list[tuple] = []

    def m(case, label):
        return by.get((case, label))

    def at_most(name, num, den, limit, keys=KEYS):
        if num is None or den is None:
            return
        r = dict(zip(KEYS, _ratios(num, den), strict=True))
        out.append((name, [(k, f"{r[k]:.2f}x", r[k] <= limit) for k in keys]))

    def at_least(name, num, den, limit):
        if num is None or den is None:
            return
        r = _ratios(num, den)
        out.append((name, [(k, f"{x:.1f}x", x >= limit) for k, x in zip(KEYS, r, strict=True)]))

    floor_a = m("a", "floor-isal")
    at_most("(a) ours <= 1.15x floor", m("a", "ours"), floor_a, 1.15)
    at_most(
        "(a) warm run <= 1.15x floor's read loop",
        m("a", "ours-warm"),
        floor_a,
        1.15,
        keys=("t_work", "c_work"),
    )
    at_least("(a) ours >= 25x faster than nilearn", m("a", "nilearn"), m("a", "ours"), 25)
    if m("a", "ours"):
        rss = _med(m("a", "ours"), "rss_mb")
        out.append(("(a) ours peak RSS <= 100 MB", [("rss", f"{rss:.0f} MB", rss <= 100)]))
    at_least(
        "(a) stdlib inflater >= 13x faster than nilearn",
        m("a", "nilearn"),
        m("a", "ours-stdlib"),
        13,
    )
    at_least("(f) .nii: ours >= 50x faster than nilearn", m("f", "nilearn"), m("f", "ours"), 50)
    at_most("(f) .nii: ours <= 1.3x plain read", m("f", "ours"), m("f", "read"), 1.3)
    if m("e", "ours") and m("a", "ours"):
        big, small = _med(m("e", "ours"), "rss_mb"), _med(m("a", "ours"), "rss_mb")
        out.append(
            (
                "(e) long-run RSS within 1.1x of the short run",
                [("rss", f"{big:.0f}/{small:.0f} MB = {big / small:.3f}", big <= 1.1 * small)],
            )
        )
    at_most("(e) long run: ours <= 1.15x floor", m("e", "ours"), m("e", "floor-isal"), 1.15)
    at_most("(b) full cleaning <= 1.3x floor", m("b", "ours"), floor_a, 1.3)
    if m("h", "geometry-1000"):
        g = _med(m("h", "geometry-1000"), "t_work")
        out.append(("(h) geometry of 1000 seeds <= 0.5 s", [("work", f"{g:.3f} s", g <= 0.5)]))
    at_most("(c) 1000 seeds: ours <= 1.3x floor", m("c", "ours"), floor_a, 1.3)
    at_least(
        "(c) 1000 seeds: ours >= 45x faster than nilearn", m("c", "nilearn"), m("c", "ours"), 45
    )
    print()
    print(
        "Targets, judged on the first figure: the whole process (wall) unless named otherwise;\n"
        "the others are shown for reference"
    )
    for name, checks in out:
        basis, text, ok = checks[0]
        line = f"  {'MET   ' if ok else 'MISSED'} {name:<48} {basis} {text:<22}"
        for b2, t2, ok2 in checks[1:]:
            line += f" {b2} {t2} ({'met' if ok2 else 'missed'})  "
        print(line.rstrip())
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    n_short, n_long = (40, 80) if args.quick else (300, 1200)
    repeats = args.repeats
    if args.quick:
        repeats = 1
        args.nilearn_repeats = 1
        args.nilearn_long_repeats = min(args.nilearn_long_repeats, 1)
        args.nilearn_smoothing_repeats = min(args.nilearn_smoothing_repeats, 1)
    print(
        f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; "
        f"peak RSS from {_GNU_TIME or '/proc/self/status VmHWM'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_masker_") as tmp:
        tmp_dir = Path(tmp)
        data_dir = args.data_dir if args.data_dir is not None else tmp_dir / "data"
        out_dir = tmp_dir / "out"
        out_dir.mkdir()
        _CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(tmp_dir / "pycache")
        t0 = time.perf_counter()
        files = prepare_data(data_dir, n_short, n_long, out_dir)
        print(
            f"data ready in {time.perf_counter() - t0:.0f} s: {n_short} and {n_long} volumes "
            f"on {SHAPE}",
            flush=True,
        )
        _run_child({"kind": "versions"}, {}, out_dir, show_stderr=True)
        ms = build_measures(files, args, out_dir)
        warm_cache([files[k] for k in ("short_gz", "long_gz", "short_nii")])
        # untimed: fill the bytecode cache of every module the children import
        warm = "import bids_spheres.masker, bids_spheres.app.seeds, nilearn.maskers, pandas, isal"
        _run_child({"kind": "import", "code": warm}, {}, out_dir)
        if args.profile:
            for m in ms:
                if m.label == "ours":
                    print(f"\n--- cProfile of ours, case {m.case} ---", flush=True)
                    spec = dict(m.spec, profile=True, out=None)
                    _run_child(spec, m.env, out_dir, show_stderr=True)
        print(f"load average before: {_loadavg()}", flush=True)
        t_run = time.perf_counter()
        run_all(ms, repeats, out_dir)
        print(
            f"measurements took {time.perf_counter() - t_run:.0f} s; "
            f"load average after: {_loadavg()}",
            flush=True,
        )
        results = report(ms, out_dir, n_short, n_long)
        if args.json:
            raw = {
                "measures": [{"case": m.case, "label": m.label, "runs": m.runs} for m in ms],
                "targets": [[name, checks] for name, checks in results],
            }
            args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
