"""Native-space mapping benchmark: seeds through a full-size fMRIPrep T1w <-> MNI composite.

Writes an ANTs composite ``.h5`` the size fMRIPrep writes for MNI152NLin2009cAsym (a
displacement field on the template's 1 mm grid, 193 x 229 x 193, float32: ~100 MB, plus an
affine), then times, each in a fresh process (interleaved, medians):

* ``read``: nitransforms' ITK reader on the file (what the first run of a subject pays);
* ``map``: Power 264 + 36 random seeds (300) through the read transforms;
* ``read+map (map_points)``: both, as a run calls them;
* ``cached``: the same call again in the same process (``bids_spheres.app.native``'s
  per-process cache) and from the work directory's cache in a new process;
* ``nitransforms``: ``nitransforms.manip.load(h5, fmt="itk").map(seeds)`` on the whole
  field, for comparison, and the largest difference between the two.

    python benchmarks/bench_native.py [--repeats 3] [--field-mm 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {1: (193, 229, 193), 2: (97, 115, 97)}


def write_transform(path: Path, field_mm: int) -> None:
    import nibabel as nib
    import numpy as np

    from bids_spheres.app.native import write_itk_composite

    shape = SHAPES[field_mm]
    affine = np.diag([float(field_mm)] * 3 + [1.0])
    affine[:3, 3] = (-96.0, -132.0, -78.0)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    xyz = (ijk * field_mm + affine[:3, 3]).reshape(*shape, 3)
    k = 2 * np.pi / 100.0
    deltas = np.stack(
        [4 * np.sin(k * xyz[..., 2]), 3 * np.cos(k * xyz[..., 0]), np.sin(k * xyz[..., 1])], -1
    ).astype(np.float32)
    point_map = np.eye(4)
    point_map[:3, 3] = (6.0, -9.0, 12.0)
    write_itk_composite(path, [point_map, nib.Nifti1Image(deltas, affine)])


def seeds():  # -> numpy.ndarray (numpy is imported in the children only)
    import numpy as np

    from bids_spheres.app.seeds import load

    power = load("power2011").coords_mm
    extra = np.random.default_rng(0).uniform((-60, -90, -30), (60, 60, 70), (36, 3))
    return np.vstack([power, extra])


class _Clock:
    """Wall and CPU seconds since the last lap (the machine may be shared: CPU is the cost)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> list[float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = [wall - self.wall, cpu - self.cpu]
        self.wall, self.cpu = wall, cpu
        return out


def child(kind: str, path: Path, cache: Path) -> dict:
    import numpy as np

    points = seeds()
    out: dict = {}
    if kind == "ours":
        from bids_spheres.app import native

        clock = _Clock()
        stored = native._read(path)
        out["read"] = clock.lap()
        mapped = native._apply(stored, points)
        out["map"] = clock.lap()
        native.map_points(path, points, cache_dir=cache)  # read + map, fills both caches
        out["read+map (map_points)"] = clock.lap()
        native.map_points(path, points, cache_dir=cache)
        out["cached (process)"] = clock.lap()
        np.save(cache.parent / "ours.npy", mapped)
    elif kind == "disk":
        from bids_spheres.app import native

        clock = _Clock()
        native.map_points(path, points, cache_dir=cache)
        out["cached (work dir)"] = clock.lap()
    else:
        from nitransforms.manip import load

        clock = _Clock()
        mapped = load(str(path), fmt="itk").map(points)
        out["nitransforms load+map"] = clock.lap()
        ours = np.load(cache.parent / "ours.npy")
        out["max |ours - nitransforms| mm"] = float(np.abs(ours - mapped).max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--field-mm", type=int, choices=sorted(SHAPES), default=1)
    parser.add_argument(
        "--child", nargs=3, metavar=("KIND", "H5", "CACHE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        kind, path, cache = args.child
        print(json.dumps(child(kind, Path(path), Path(cache))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
        write_transform(path, args.field_mm)
        print(f"{path.name}: {path.stat().st_size / 1e6:.0f} MB, field {SHAPES[args.field_mm]}")
        results: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            cache = Path(tmp) / f"cache-{repeat}"
            for kind in ("ours", "disk", "nitransforms"):
                done = subprocess.run(
                    [sys.executable, __file__, "--child", kind, str(path), str(cache)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                for key, value in json.loads(done.stdout.splitlines()[-1]).items():
                    results.setdefault(key, []).append(value)
        for key, values in results.items():
            if key.startswith("max"):
                print(f"{key:32s} median {statistics.median(values):.3g}")
                continue
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            print(f"{key:32s} wall {wall:8.4f} s   cpu {cpu:8.4f} s   ({len(values)} runs)")


if __name__ == "__main__":
    main()
