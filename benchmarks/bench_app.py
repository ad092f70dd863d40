"""The participant level on 8 fMRIPrep runs, side by side with a nilearn script and the floor.

Usage
-----
    python benchmarks/bench_app.py                          # data in a temp dir, removed
    python benchmarks/bench_app.py --data-dir /tmp/bench_app_data     # keep and reuse the data
    python benchmarks/bench_app.py --data-dir D --cases app --nprocs 1 2 --repeats 5
    python benchmarks/bench_app.py --data-dir D --reuse-index         # second-start cost
    python benchmarks/bench_app.py --quick                  # smoke run: 2 runs x 60 volumes
    python benchmarks/bench_app.py --cases app --reports    # price of the participant reports
    PYTHONPATH=/tmp/app_snapshot python benchmarks/bench_app.py ...   # another checkout

The three sides (each repetition of each in a FRESH child process)
-------------------------------------------------------------------
* ``app``: the BIDS-App exactly as a user starts it,
  ``[sys.executable, "-m", "bids_spheres", BIDS_DIR, OUT, "participant",
  "--seeds", "power2011", "--denoise-strategy", "simple", "--nprocs", N]``,
  with this script's environment (so ``PYTHONPATH`` selects the checkout) and
  every other option at its default: radius 5 mm, ``--mask fmriprep`` (each
  run's ``desc-brain_mask``), ``--min-coverage 0.5``, ``--detrend``,
  ``--standardize zscore_sample``, no temporal filter, ``-w OUT/.work``. It
  indexes the dataset with pybids (in a short-lived child), reads each run's
  sidecar, confounds TSV and mask, extracts and cleans the sphere signals,
  and writes per run the timeseries TSV + JSON sidecar and the correlation
  matrix (relmat) TSV + JSON, plus the dataset-level files. ``--nprocs``
  defaults to ``1 2``: 2 is what a user of this 2-core machine would pass
  (``--nprocs $(nproc)``), 1 shows the cost per core; the targets are judged
  for each.
* ``nilearn``: the script a user would write with nilearn 0.14, one process,
  run after run: glob the ``*_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz``
  files (no pybids), take ``RepetitionTime`` from the BOLD's JSON sidecar,
  ``load_confounds_strategy(bold, denoise_strategy="simple")`` (the same 24
  motion + WM + CSF + cosine regressors, demeaned, non-steady-state volumes
  dropped through ``sample_mask``),
  ``NiftiSpheresMasker(power_2011_coords, radius=5, mask_img=<the run's
  desc-brain_mask>, detrend=True, standardize="zscore_sample", t_r=TR)
  .fit_transform(bold, confounds=..., sample_mask=...)``, and
  ``DataFrame.to_csv(sep="\\t")`` of the signals -- the app's defaults, so both
  compute the same numbers. It writes less than the app (no sidecars, no
  relmat), which favours it.
* ``floor``: the least any tool must do, inflating the same 8 ``.nii.gz``
  files to the end in one process with isal's public API
  (``isal.igzip.open(path, "rb")``, ``readinto`` an 8 MiB buffer).

What is measured
----------------
For every child the parent records the wall time (``time.perf_counter``
around spawn + wait), the CPU time and the peak RSS from ``os.wait4`` on the
child. Its ``ru_maxrss`` is the largest peak RSS of the child and of every
descendant it waited for, i.e. the largest single process of the tree, not a
sum: the app's pybids-indexing child and its ``--nprocs`` workers are
``concurrent.futures`` processes that the app joins before it exits, so they
are covered. ``--check-rss`` checks it: it also samples every process of
the tree from ``/proc`` every 20 ms; the sampled largest VmHWM equalled the
wait4 figure to the MB in every check (``--nprocs 1``: the coordinator is the
largest, 2 processes seen; ``--nprocs 2``: a worker is, 4 processes seen), and
it prints the sampled peak of the SUM of the tree's RSS too (with
``--nprocs 2`` two workers are alive at once). A pool worker allocating
300 MB under a ~10 MB parent gives a wait4 ``ru_maxrss`` of 311 MB. Linux
starts a child's ``ru_maxrss`` at its parent's peak, so the parent stays
small (no numpy; data generation and the agreement check run in children)
and prints its own peak (~25 MB), below every figure measured. Children
start in the scratch folder: ``python -m`` puts the current directory first
on ``sys.path``, so started from a checkout the app would otherwise be that
checkout whatever ``PYTHONPATH`` says; the package path is printed.
Repetitions are interleaved (repetition 1 of every side, then 2, ...) with
the order rotated each time; the table shows medians. The app's output
directory is removed before every repetition, so every run is really
processed (not skipped as finished). The work directory is the app's default
``OUT/.work``, so the pybids index is built afresh every time: the cost of a
first start. ``--reuse-index`` instead passes ``-w`` to a work directory kept
between repetitions (the index built by the untimed warm-up run), the cost of
a later start. Before measuring, the data files are read once (page cache)
and the app is run once untimed, so that every child finds its bytecode in a
private cache (``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` is
dropped), as an installed package would have it.

Agreement: after the repetitions, a child compares the app's and nilearn's
timeseries TSVs of the first run (and of all runs), column by column in seed
order, and prints the largest absolute difference against ``--tolerance``
(default 1e-3; the signals are z-scored. nilearn computes the sphere means
and the cleaning in the image's float32, the app in float64: with a baseline
near 1000 and residuals of a few units the rounding reaches ~1e-4).

Data (deterministic, written once per ``--data-dir`` and reused while its
``manifest.json`` matches): an fMRIPrep 23-like derivative dataset of 4
subjects x 2 runs of task rest, MNI152NLin2009cAsym at 3 mm (65 x 77 x 65
voxels, no ``res`` entity), 240 volumes, TR 2 s. The BOLD is float32, not
skull-stripped (a brain ellipsoid holding every Power seed with a baseline
near 1000, slow oscillations with smooth spatial loadings, motion
contamination, a drift and Gaussian noise; a dimmer "scalp" shell; zeros
outside the head), two brighter non-steady-state volumes, saved by nibabel
with its default gzip level (what fMRIPrep does). Per run: the
``desc-preproc_bold.nii.gz`` and its JSON sidecar (``RepetitionTime``,
``SkullStripped``, ``TaskName``), ``desc-brain_mask.nii.gz`` + JSON,
``boldref.nii.gz``, and ``desc-confounds_timeseries.tsv`` + ``.json`` with
fMRIPrep's columns (global signal, CSF, WM with their expansions, DVARS, FD,
RMSD, 6 tCompCor + 20 cCompCor + 40 wCompCor + 60 aCompCor, cosines,
non-steady-state and motion outliers, 24 motion parameters; about 180
columns written by pandas at full precision, ~0.9 MB) and CompCor metadata including
dropped components. About 1.0 GB on disk (2.4 GB inflated).

Options: ``--repeats N`` (default 3), ``--nilearn-repeats N`` (default: as
``--repeats``; ~1 min each), ``--cases app,nilearn,floor``, ``--nprocs 1 2``,
``--reuse-index``, ``--tolerance``, ``--check-rss``, ``--profile`` (the app
once under ``-X importtime`` and cProfile with ``--nprocs 1``, not timed),
``--json FILE`` (every raw measurement), ``--keep DIR`` (keep the outputs).
"""

from __future__ import annotations

import json
import os
import sys
import time

_T_START = time.perf_counter()

SHAPE = (65, 77, 65)
VOXEL_MM = 3.0
ORIGIN_MM = (-96.0, -132.0, -78.0)
AFFINE = [
    [VOXEL_MM, 0.0, 0.0, ORIGIN_MM[0]],
    [0.0, VOXEL_MM, 0.0, ORIGIN_MM[1]],
    [0.0, 0.0, VOXEL_MM, ORIGIN_MM[2]],
    [0.0, 0.0, 0.0, 1.0],
]
N_VOLUMES = 240
N_SUBJECTS, RUNS_PER_SUBJECT = 4, 2
T_R = 2.0
N_NONSTEADY = 2
SPACE = "MNI152NLin2009cAsym"
SEED = 20241212
# The brain: an ellipsoid in mm (centre, semi-axes) holding every Power seed's sphere.
BRAIN_CENTRE = (0.0, -18.0, 10.0)
BRAIN_AXES = (78.0, 104.0, 82.0)
HEAD_MARGIN_MM = 12.0
BLOCK = 8 * 1024 * 1024
DATA_VERSION = 1
N_COMPCOR = {"t": 6, "c": 20, "w": 40, "a": 60}
N_DROPPED = 120
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


# ==========================================================================
# child side: imports inside the functions, each child pays only for its own


def _child(spec: dict) -> None:
    kind = spec["kind"]
    if kind == "floor":
        result = _child_floor(spec)
    elif kind == "nilearn":
        result = _child_nilearn(spec)
    elif kind == "generate":
        result = _child_generate(spec)
    elif kind == "check":
        result = _child_check(spec)
    elif kind == "versions":
        result = _child_versions()
    elif kind == "index":
        result = _child_index(spec)
    elif kind == "import":
        t0 = time.perf_counter()
        exec(spec["code"], {})
        result = {"t_import": time.perf_counter() - t0}
    else:  # pragma: no cover
        raise SystemExit(f"unknown child kind {kind!r}")
    result["t_since_start"] = time.perf_counter() - _T_START
    with open(spec["result"], "w") as fh:
        json.dump(result, fh)


def _child_floor(spec: dict) -> dict:
    """Inflate every file to its end with isal's public API, 8 MiB at a time."""
    t0 = time.perf_counter()
    from isal import igzip

    t1 = time.perf_counter()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    total = 0
    for path in spec["bolds"]:
        with igzip.open(path, "rb") as fh:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                total += n
    return {"t_import": t1 - t0, "t_work": time.perf_counter() - t1, "bytes": total}


def _child_nilearn(spec: dict) -> dict:
    """The plain nilearn script (see the module docstring)."""
    t0 = time.perf_counter()
    import glob
    import warnings

    import pandas as pd
    from nilearn import datasets
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiSpheresMasker

    t1 = time.perf_counter()
    warnings.simplefilter("ignore")  # nilearn's FutureWarnings: not what is measured
    bids_dir, out_dir = spec["bids_dir"], spec["out_dir"]
    rois = datasets.fetch_coords_power_2011().rois
    coords = rois[["x", "y", "z"]].to_numpy().tolist()
    names = [f"roi{r:03d}" for r in rois["roi"]]
    pattern = os.path.join(bids_dir, "sub-*", "func", f"*_space-{SPACE}_desc-preproc_bold.nii.gz")
    bolds = sorted(glob.glob(pattern))
    for bold in bolds:
        stem = bold[: -len("_desc-preproc_bold.nii.gz")]
        with open(bold[: -len(".nii.gz")] + ".json") as fh:
            t_r = json.load(fh)["RepetitionTime"]
        confounds, sample_mask = load_confounds_strategy(bold, denoise_strategy="simple")
        masker = NiftiSpheresMasker(
            coords,
            radius=5.0,
            mask_img=stem + "_desc-brain_mask.nii.gz",
            detrend=True,
            standardize="zscore_sample",
            t_r=t_r,
        )
        signals = masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
        rel = os.path.relpath(stem, bids_dir) + "_desc-simple_timeseries.tsv"
        target = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        pd.DataFrame(signals, columns=names).to_csv(target, sep="\t", index=False, na_rep="n/a")
    return {"t_import": t1 - t0, "t_work": time.perf_counter() - t1, "runs": len(bolds)}


def _child_check(spec: dict) -> dict:
    """max |app - nilearn| of the timeseries, first run and all runs, in seed order."""
    import glob

    import numpy as np
    import pandas as pd

    app = sorted(glob.glob(os.path.join(spec["app_out"], "sub-*", "func", "*_timeseries.tsv")))
    nl = sorted(glob.glob(os.path.join(spec["nilearn_out"], "sub-*", "func", "*_timeseries.tsv")))
    if not app or len(app) != len(nl):
        return {"error": f"{len(app)} app TSVs, {len(nl)} nilearn TSVs"}
    per_run = []
    for a_path, n_path in zip(app, nl, strict=True):
        a = pd.read_csv(a_path, sep="\t", na_values="n/a").to_numpy(np.float64)
        b = pd.read_csv(n_path, sep="\t", na_values="n/a").to_numpy(np.float64)
        if a.shape != b.shape:
            per_run.append(
                {"run": os.path.basename(a_path), "shape": [list(a.shape), list(b.shape)]}
            )
            continue
        both = np.isfinite(a) & np.isfinite(b)
        d = np.where(both, np.abs(a - b), 0.0)
        col = d.max(axis=0)
        per_run.append(
            {
                "run": os.path.basename(a_path),
                "shape": list(a.shape),
                "maxdiff": float(d.max()),
                "worst_column": int(col.argmax()),
                "columns_over_tol": int((col > spec["tolerance"]).sum()),
                "nan_app": int((~np.isfinite(a)).all(axis=0).sum()),
                "nan_nilearn": int((~np.isfinite(b)).all(axis=0).sum()),
                "max_abs": float(np.nanmax(np.abs(b))),
            }
        )
    return {"runs": per_run}


def _child_index(spec: dict) -> dict:
    """The app's discovery alone (public discovery API): import, fresh index, reuse, collect."""
    t0 = time.perf_counter()
    from bids_spheres.app import discovery

    t1 = time.perf_counter()
    root, db = spec["bids_dir"], spec["db_dir"]
    layout = discovery.make_layout(root, db)
    t2 = time.perf_counter()
    del layout
    layout = discovery.make_layout(root, db)
    t3 = time.perf_counter()
    runs = discovery.collect_runs(layout, space=SPACE)
    t4 = time.perf_counter()
    return {
        "t_import": t1 - t0,
        "t_fresh": t2 - t1,
        "t_reuse": t3 - t2,
        "t_collect": t4 - t3,
        "runs": len(runs),
    }


def _child_versions() -> dict:
    import bids
    import isal
    import nibabel
    import nilearn
    import numpy
    import pandas
    import scipy

    import bids_spheres

    return {
        "versions": {
            "python": sys.version.split()[0],
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            "pandas": pandas.__version__,
            "nibabel": nibabel.__version__,
            "isal": isal.__version__,
            "pybids": bids.__version__,
            "nilearn": nilearn.__version__,
            "bids_spheres": bids_spheres.__version__,
            "bids_spheres_path": os.path.dirname(bids_spheres.__file__),
        }
    }


# ---------------------------------------------------------------- data (child side)


def _ellipsoid(xyz, centre, axes):
    import numpy as np

    rel = (xyz - np.asarray(centre)[:, None]) / np.asarray(axes)[:, None]
    return np.einsum("ij,ij->j", rel, rel) <= 1.0


def _grid_xyz():
    """World coordinates (3, n) of every voxel, flattened in Fortran (on-disk) order."""
    import numpy as np

    ijk = np.indices(SHAPE, dtype=np.float64).reshape(3, -1, order="F")
    affine = np.asarray(AFFINE)
    return affine[:3, :3] @ ijk + affine[:3, 3:4]


def _write_nifti(path: str, data, t_r: float | None = None) -> None:
    """nib.save (nibabel's default gzip level, as fMRIPrep writes), atomically."""
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(data, np.asarray(AFFINE))
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(np.asarray(AFFINE), code=4)
    img.set_qform(np.asarray(AFFINE), code=4)
    if t_r is not None:
        img.header["pixdim"][4] = t_r
    head, name = os.path.split(path)
    tmp = os.path.join(head, ".part-" + name)  # same extension: nibabel picks the format
    nib.save(img, tmp)
    os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _cosines(n: int):
    """fMRIPrep's DCT basis (128 s cut-off), unit norm, over all n volumes."""
    import numpy as np

    count = int(np.floor(2 * n * T_R / 128.0))
    t = np.arange(n)
    return np.column_stack(
        [np.sqrt(2.0 / n) * np.cos(np.pi / n * (t + 0.5) * k) for k in range(1, count + 1)]
    )


def _write_run(func: str, prefix: str, i_run: int, n_vol: int, anatomy: dict) -> list[str]:
    """One run: BOLD (+ sidecar), brain mask (+ JSON), boldref, confounds TSV + JSON."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng([SEED, i_run])
    brain, head, xyz_in = anatomy["brain"], anatomy["head"], anatomy["xyz_in"]
    csf, wm = anatomy["csf"], anatomy["wm"]
    where_brain = np.flatnonzero(brain)
    where_shell = np.flatnonzero(head & ~brain)
    n_in, n_shell = where_brain.size, where_shell.size

    # motion: smooth random walks (mm, rad), small jerks
    steps = rng.standard_normal((n_vol, 6)) * np.array([0.02, 0.02, 0.03, 3e-4, 3e-4, 3e-4])
    params = np.cumsum(steps, axis=0)
    jerks = rng.choice(np.arange(N_NONSTEADY + 5, n_vol - 5), 3, replace=False)
    params[jerks, 2] += 0.6
    params[jerks, 3] += 0.005
    # spatial structure inside the brain
    base = (
        1000.0
        + 80.0 * np.sin(3.0 * xyz_in[0]) * np.cos(2.0 * xyz_in[1])
        + 40.0 * xyz_in[2]
        + 200.0 * csf
    ).astype(np.float32)
    k = 8
    freqs = rng.uniform(0.005, 0.15, k)
    phases = rng.uniform(0.0, 2.0 * np.pi, k)
    centres = rng.uniform(-0.8, 0.8, (k, 3))
    loadings = np.stack(
        [12.0 * np.exp(-np.sum((xyz_in.T - c) ** 2, axis=1) / 0.15) for c in centres], axis=1
    ).astype(np.float32)
    motion_w = (
        60.0 * (xyz_in.T @ rng.uniform(-1.0, 1.0, (3, 6)) + rng.uniform(-0.5, 0.5, 6))
    ).astype(np.float32)
    motion_w[:, 3:] *= 50.0  # radians at a 50 mm lever arm
    drift_w = rng.normal(0.0, 0.05, n_in).astype(np.float32)
    shell_base = (250.0 + 50.0 * rng.standard_normal(n_shell)).astype(np.float32)

    data = np.zeros((*SHAPE, n_vol), dtype=np.float32, order="F")
    flat = data.reshape(-1, n_vol, order="F")  # a view (Fortran order)
    assert np.shares_memory(flat, data)
    gs = np.empty(n_vol)
    csf_mean = np.empty(n_vol)
    wm_mean = np.empty(n_vol)
    dvars = np.full(n_vol, np.nan)
    previous = None
    for t in range(n_vol):
        noise = np.random.default_rng([SEED, i_run, 1, t]).standard_normal(
            n_in + n_shell, dtype=np.float32
        )
        s = np.sin(2.0 * np.pi * freqs * t * T_R + phases).astype(np.float32)
        vol = (
            base
            + loadings @ s
            + motion_w @ params[t].astype(np.float32)
            + drift_w * np.float32(t)
            + np.float32(15.0) * noise[:n_in]
        )
        if t < N_NONSTEADY:
            vol *= np.float32(1.5 - 0.2 * t)
        flat[where_brain, t] = vol
        flat[where_shell, t] = shell_base + np.float32(30.0) * noise[n_in:]
        gs[t], csf_mean[t], wm_mean[t] = vol.mean(), vol[csf].mean(), vol[wm].mean()
        if previous is not None:
            dvars[t] = float(np.sqrt(np.mean((vol - previous) ** 2, dtype=np.float64)))
        previous = vol

    space = f"{prefix}_space-{SPACE}"
    bold = os.path.join(func, f"{space}_desc-preproc_bold.nii.gz")
    _write_nifti(bold, data, t_r=T_R)
    boldref = data[..., N_NONSTEADY:].mean(axis=3)
    del data, flat
    _write_json(
        os.path.join(func, f"{space}_desc-preproc_bold.json"),
        {"RepetitionTime": T_R, "SkullStripped": False, "TaskName": "rest"},
    )
    _write_nifti(os.path.join(func, f"{space}_boldref.nii.gz"), boldref)
    mask = np.zeros(SHAPE, dtype=np.uint8, order="F")
    mask.reshape(-1, order="F")[where_brain] = 1
    _write_nifti(os.path.join(func, f"{space}_desc-brain_mask.nii.gz"), mask)
    _write_json(
        os.path.join(func, f"{space}_desc-brain_mask.json"),
        {"RawSources": [bold], "Type": "Brain"},
    )

    # confounds, fMRIPrep 23 columns and order
    columns: dict[str, np.ndarray] = {}

    def expansions(name, values):
        deriv = np.r_[np.nan, np.diff(values)]
        columns[name] = values
        columns[f"{name}_derivative1"] = deriv
        columns[f"{name}_derivative1_power2"] = deriv**2
        columns[f"{name}_power2"] = values**2

    expansions("global_signal", gs)
    expansions("csf", csf_mean)
    expansions("white_matter", wm_mean)
    columns["csf_wm"] = 0.5 * (csf_mean + wm_mean)
    columns["tcompcor"] = gs + rng.normal(0.0, 2.0, n_vol)
    columns["std_dvars"] = dvars / np.nanmedian(dvars)
    columns["dvars"] = dvars
    diff = np.abs(np.diff(params, axis=0))
    fd = np.r_[np.nan, diff[:, :3].sum(axis=1) + 50.0 * diff[:, 3:].sum(axis=1)]
    columns["framewise_displacement"] = fd
    columns["rmsd"] = np.r_[np.nan, np.sqrt(np.mean((diff * [1, 1, 1, 50, 50, 50]) ** 2, axis=1))]
    metadata: dict[str, dict] = {}
    comps_all = rng.standard_normal((n_vol, sum(N_COMPCOR.values())))
    comps_all /= np.linalg.norm(comps_all, axis=0)  # unit norm, as fMRIPrep's components
    used = 0
    for kind, count in N_COMPCOR.items():
        var = np.sort(rng.dirichlet(np.ones(count + N_DROPPED // 4)))[::-1]
        for i in range(count):
            name = f"{kind}_comp_cor_{i:02d}"
            columns[name] = comps_all[:, used]
            used += 1
            metadata[name] = {
                "CumulativeVarianceExplained": float(np.cumsum(var)[i]),
                "Mask": {"t": "", "c": "CSF", "w": "WM", "a": "combined"}[kind],
                "Method": "tCompCor" if kind == "t" else "aCompCor",
                "Retained": True,
                "SingularValue": float(100.0 * np.sqrt(var[i])),
                "VarianceExplained": float(var[i]),
            }
            if kind == "t":
                del metadata[name]["Mask"]
    for j in range(N_DROPPED):
        metadata[f"dropped_{j}"] = {
            "CumulativeVarianceExplained": 0.5 + 0.5 * (j + 1) / N_DROPPED,
            "Mask": "combined",
            "Method": "aCompCor",
            "Retained": False,
            "SingularValue": 10.0 / (j + 1),
            "VarianceExplained": 0.5 / N_DROPPED,
        }
    cos = _cosines(n_vol)
    for i in range(cos.shape[1]):
        columns[f"cosine{i:02d}"] = cos[:, i]
    for i in range(N_NONSTEADY):
        columns[f"non_steady_state_outlier{i:02d}"] = np.eye(n_vol)[:, i]
    for i, name in enumerate(MOTION):
        expansions(name, params[:, i])
    for i, vol in enumerate(np.flatnonzero(fd > 0.5)):
        columns[f"motion_outlier{i:02d}"] = np.eye(n_vol)[:, vol]
    for name in ("global_signal", "csf", "white_matter", "csf_wm", "tcompcor"):
        metadata[name] = {"Method": "Mean"}
    conf = os.path.join(func, f"{prefix}_desc-confounds_timeseries.tsv")
    _write_text(conf, pd.DataFrame(columns).to_csv(sep="\t", index=False, na_rep="n/a"))
    _write_json(conf[: -len(".tsv")] + ".json", metadata)
    return [bold]


def _child_generate(spec: dict) -> dict:
    import numpy as np

    data_dir, n_vol = spec["data_dir"], spec["n_volumes"]
    n_sub, n_runs = spec["n_subjects"], spec["runs_per_subject"]
    xyz = _grid_xyz()
    brain = _ellipsoid(xyz, BRAIN_CENTRE, BRAIN_AXES)
    head = _ellipsoid(xyz, BRAIN_CENTRE, [a + HEAD_MARGIN_MM for a in BRAIN_AXES])
    xyz_in = (xyz[:, brain] - np.asarray(BRAIN_CENTRE)[:, None]) / np.asarray(BRAIN_AXES)[:, None]
    anatomy = {
        "brain": brain,
        "head": head,
        "xyz_in": xyz_in,
        "csf": np.einsum("ij,ij->j", xyz_in / 0.15, xyz_in / 0.15) <= 1.0,
        "wm": np.einsum("ij,ij->j", xyz_in / 0.6, xyz_in / 0.6) <= 1.0,
    }
    anatomy["wm"] &= ~anatomy["csf"]
    _write_json(
        os.path.join(data_dir, "dataset_description.json"),
        {
            "Name": "fMRIPrep - fMRI PREProcessing workflow",
            "BIDSVersion": "1.8.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "fMRIPrep",
                    "Version": "23.2.1",
                    "CodeURL": "https://github.com/nipreps/fmriprep/archive/23.2.1.tar.gz",
                }
            ],
            "HowToAcknowledge": "Synthetic data written by benchmarks/bench_app.py.",
        },
    )
    bolds = []
    i_run = 0
    for s in range(1, n_sub + 1):
        func = os.path.join(data_dir, f"sub-{s:02d}", "func")
        os.makedirs(func, exist_ok=True)
        for r in range(1, n_runs + 1):
            t0 = time.perf_counter()
            bolds += _write_run(func, f"sub-{s:02d}_task-rest_run-{r}", i_run, n_vol, anatomy)
            i_run += 1
            size = os.path.getsize(bolds[-1]) / 2**20
            print(
                f"wrote {bolds[-1]} ({size:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return {"bolds": bolds}


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(json.loads(sys.argv[2]))
    sys.exit(0)


# ==========================================================================
# parent side: standard library only, so that this process stays small (its
# peak RSS is where every child's ru_maxrss starts)

import argparse  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

_DROP_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
_CHILD_ENV: dict[str, str] = {}
# Children start in the scratch folder: ``python -m`` puts the current directory first
# on sys.path, and started from a checkout it would import that checkout's package
# whatever PYTHONPATH says.
_CHILD_CWD: list[str] = []
TARGETS = {
    "floor": 1.5,  # app wall <= 1.5x the floor
    "speed": 12.0,  # nilearn wall / app wall >= 12
    "memory": 6.0,  # nilearn peak RSS / app peak RSS >= 6
    "rss_mb": 120.0,  # app peak RSS <= 120 MB
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where to generate (or reuse) the dataset; default: a temp dir, removed",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 runs x 60 volumes (its own data), 1 repetition",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--nilearn-repeats",
        type=int,
        default=None,
        help="repetitions of the nilearn script (default: --repeats; ~1 min each)",
    )
    parser.add_argument(
        "--cases",
        default="app,nilearn,floor",
        help="comma-separated subset of app, nilearn, floor (default: all)",
    )
    parser.add_argument(
        "--nprocs",
        type=int,
        nargs="+",
        default=[1, 2],
        help="the app's --nprocs values to measure (default: 1 2; 2 = this machine's cores, "
        "what a user would pass)",
    )
    parser.add_argument(
        "--reuse-index",
        action="store_true",
        help="keep the app's work directory (pybids index) between repetitions: the cost of "
        "a later start; default: a fresh index every time (first start)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest accepted |app - nilearn| of the z-scored timeseries (default 1e-3)",
    )
    parser.add_argument(
        "--check-rss",
        action="store_true",
        help="also sample every process of each child's tree from /proc (20 ms) and print "
        "the largest VmHWM and the peak of the summed RSS next to wait4's ru_maxrss",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="before measuring, run the app once with -X importtime and once under cProfile "
        "(--nprocs 1) and print the summaries (not timed)",
    )
    parser.add_argument(
        "--reports",
        action="store_true",
        help="also measure the app with --no-reports, to price the participant reports",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every raw measurement here")
    parser.add_argument(
        "--keep", type=Path, default=None, help="copy the last outputs of each side here"
    )
    return parser


# ------------------------------------------------------------ children


class _TreeSampler(threading.Thread):
    """Every 20 ms: the processes descending from ``root``, their VmHWM and summed VmRSS."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.max_hwm_kb = 0
        self.max_sum_kb = 0
        self.pids: set[int] = set()

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        out = {}
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        key, value = line.split()[:2]
                        out[key[:-1]] = int(value)
        except OSError:
            pass
        return out

    def _tree(self) -> list[int]:
        parent_of = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as fh:
                        stat = fh.read()
                except OSError:
                    continue
                parent_of[int(name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree, frontier = [self.root], [self.root]
        while frontier:
            frontier = [p for p, pp in parent_of.items() if pp in frontier]
            tree += frontier
        return tree

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for pid in self._tree():
                st = self._status(pid)
                if st:
                    self.pids.add(pid)
                    self.max_hwm_kb = max(self.max_hwm_kb, st.get("VmHWM", 0))
                    total += st.get("VmRSS", 0)
            self.max_sum_kb = max(self.max_sum_kb, total)
            self.stop.wait(0.02)


def _child_env(extra: dict | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(_CHILD_ENV)
    env.update(extra or {})
    return env


def _spawn(cmd: list[str], log: Path, sample: bool = False, env: dict | None = None) -> dict:
    """Run cmd in a fresh process; wall time, CPU time and peak RSS from os.wait4."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=env or _child_env(),
            cwd=_CHILD_CWD[0] if _CHILD_CWD else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        sampler = _TreeSampler(proc.pid) if sample else None
        if sampler:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    result = {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024.0,
        "code": code,
    }
    if sampler:
        sampler.stop.set()
        sampler.join()
        result.update(
            sampled_hwm_mb=sampler.max_hwm_kb / 1024.0,
            sampled_sum_mb=sampler.max_sum_kb / 1024.0,
            processes=len(sampler.pids),
        )
    return result


def _run_child(spec: dict, work: Path, sample: bool = False, show: bool = False) -> dict:
    """One --child of this script; its own report merged into the measurement."""
    result_path = work / "result.json"
    result_path.unlink(missing_ok=True)
    log = work / "child.log"
    spec = dict(spec, result=str(result_path))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    r = _spawn(cmd, log, sample)
    text = log.read_text(errors="replace")
    if show and text.strip():
        print(text.rstrip(), flush=True)
    if r["code"] != 0 or not result_path.exists():
        raise RuntimeError(f"child {spec['kind']} failed ({r['code']}):\n{text[-5000:]}")
    return {**json.loads(result_path.read_text()), **r}


def app_command(
    bids_dir: Path, out: Path, nprocs: int, work_dir: Path | None, extra: tuple[str, ...] = ()
) -> list[str]:
    cmd = [sys.executable, "-m", "bids_spheres", str(bids_dir), str(out), "participant"]
    cmd += ["--seeds", "power2011", "--denoise-strategy", "simple", "--nprocs", str(nprocs)]
    cmd += list(extra)
    if work_dir is not None:
        cmd += ["--work-dir", str(work_dir)]
    return cmd


@dataclass
class Measure:
    label: str
    kind: str  # app, nilearn, floor
    nprocs: int = 0
    repeats: int = 3
    runs: list = field(default_factory=list)
    extra: tuple = ()  # more app options (--reports: "--no-reports" on one side)


def _clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def measure_once(m: Measure, ctx: dict, sample: bool) -> dict:
    work: Path = ctx["work"]
    if m.kind == "app":
        tag = "_noreports" if "--no-reports" in m.extra else ""
        out = work / f"out_app_np{m.nprocs}{tag}"
        _clear(out)  # every run is processed, none skipped as finished
        cmd = app_command(ctx["bids_dir"], out, m.nprocs, ctx["app_work_dir"], m.extra)
        log = work / f"app_np{m.nprocs}{tag}.log"
        r = _spawn(cmd, log, sample)
        n_out = len(list(out.glob("sub-*/func/*_timeseries.tsv")))
        r["reports"] = len(list(out.glob("sub-*.html")))
        if r["code"] != 0 or n_out != ctx["n_runs"]:
            raise RuntimeError(
                f"the app exited {r['code']} with {n_out}/{ctx['n_runs']} timeseries:\n"
                + log.read_text(errors="replace")[-5000:]
            )
        return r
    if m.kind == "nilearn":
        out = work / "out_nilearn"
        _clear(out)
        spec = {"kind": "nilearn", "bids_dir": str(ctx["bids_dir"]), "out_dir": str(out)}
        return _run_child(spec, work, sample)
    spec = {"kind": "floor", "bolds": ctx["bolds"]}
    return _run_child(spec, work, sample)


def run_all(ms: list[Measure], ctx: dict, sample: bool) -> None:
    plan = []
    for rep in range(max(m.repeats for m in ms)):
        todo = [m for m in ms if rep < m.repeats]
        shift = rep % max(len(todo), 1)  # rotate: no side always follows the same one
        plan.append(todo[shift:] + todo[:shift])
    total, done, t_begin = sum(len(p) for p in plan), 0, time.perf_counter()
    for rep, todo in enumerate(plan):
        for m in todo:
            r = measure_once(m, ctx, sample)
            r["rep"] = rep + 1
            r["loadavg"] = os.getloadavg()[0]
            m.runs.append(r)
            done += 1
            extra = ""
            if sample:
                extra = (
                    f"  sampled: max VmHWM {r['sampled_hwm_mb']:.0f} MB, "
                    f"peak tree sum {r['sampled_sum_mb']:.0f} MB, {r['processes']} processes"
                )
            print(
                f"[{done:2d}/{total}] rep {rep + 1} {m.label:<16} wall {r['wall']:7.2f} s  "
                f"cpu {r['cpu']:7.2f} s  rss {r['rss_mb']:6.0f} MB  load {r['loadavg']:.2f}  "
                f"(elapsed {time.perf_counter() - t_begin:4.0f} s){extra}",
                flush=True,
            )


# ------------------------------------------------------------ data


def prepare_data(data_dir: Path, n_volumes: int, n_subjects: int, work: Path) -> list[str]:
    """Generate the dataset in a child process (keeps this process small), or reuse it."""
    want = {
        "version": DATA_VERSION,
        "seed": SEED,
        "shape": list(SHAPE),
        "n_volumes": n_volumes,
        "n_subjects": n_subjects,
        "runs_per_subject": RUNS_PER_SUBJECT,
    }
    manifest = data_dir / "manifest.json"
    if manifest.exists():
        have = json.loads(manifest.read_text())
        if {k: have.get(k) for k in want} == want and all(
            os.path.exists(p) for p in have.get("bolds", [])
        ):
            print(f"reusing the dataset in {data_dir}", flush=True)
            return have["bolds"]
    ours = data_dir / ".bench_app"  # marks a folder this script writes (maybe unfinished)
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (manifest.exists() or ours.exists()):
            raise SystemExit(
                f"--data-dir {data_dir} is not empty and was not written by {__file__}"
            )
        _clear(data_dir)  # an older, different or unfinished dataset of this script
    data_dir.mkdir(parents=True, exist_ok=True)
    ours.touch()
    spec = {
        "kind": "generate",
        "data_dir": str(data_dir),
        "n_volumes": n_volumes,
        "n_subjects": n_subjects,
        "runs_per_subject": RUNS_PER_SUBJECT,
    }
    r = _run_child(spec, work, show=True)
    print(f"generated the dataset in {r['wall']:.0f} s (peak RSS {r['rss_mb']:.0f} MB)")
    manifest.write_text(json.dumps({**want, "bolds": r["bolds"]}, indent=1))
    return r["bolds"]


def warm_cache(root: Path) -> None:
    """Read every file of the dataset once, so no timed run pays for the disk."""
    buf = bytearray(BLOCK)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


# ------------------------------------------------------------ profile (untimed)


def profile_app(ctx: dict) -> None:
    """Untimed: where the app's time goes (imports by package, indexing, cProfile)."""
    work: Path = ctx["work"]
    out = work / "out_profile"
    cmd = app_command(ctx["bids_dir"], out, 1, None)
    _clear(out)
    log = work / "importtime.log"
    r = _spawn([cmd[0], "-X", "importtime", *cmd[1:]], log)
    by_package: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:") :].split("|")
        try:
            self_us = int(parts[0])
        except ValueError:
            continue
        top = parts[2].strip().split(".")[0]
        by_package[top] = by_package.get(top, 0) + self_us
    total = sum(by_package.values())
    print(
        f"\n--- -X importtime of the app, --nprocs 1 (whole run {r['wall']:.2f} s): "
        f"{total / 1000:.0f} ms of imports (self time by top-level package; the indexing "
        "child's lazy imports included) ---"
    )
    for name, us in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {name:<24} {us / 1000:7.1f} ms")
    spec = {"kind": "index", "bids_dir": str(ctx["bids_dir"]), "db_dir": str(work / "index_db")}
    _clear(work / "index_db")
    try:
        ix = _run_child(spec, work)
    except RuntimeError as exc:  # the discovery API changed: say so, go on
        print(f"\n--- discovery alone: skipped ({str(exc).splitlines()[-1]}) ---")
    else:
        print(
            f"\n--- discovery alone (bids_spheres.app.discovery in a fresh process, "
            f"{ix['wall']:.2f} s, peak RSS {ix['rss_mb']:.0f} MB) ---\n"
            f"  import {ix['t_import']:.3f} s; make_layout fresh index {ix['t_fresh']:.3f} s, "
            f"reused {ix['t_reuse']:.3f} s; collect_runs {ix['t_collect']:.3f} s "
            f"({ix['runs']} runs)"
        )
    _clear(out)
    prof = work / "app.prof"
    r = _spawn([cmd[0], "-m", "cProfile", "-o", str(prof), *cmd[1:]], work / "cprofile.log")
    print(
        f"\n--- cProfile of the app's coordinating process, --nprocs 1 (wall {r['wall']:.2f} s "
        "under the profiler; the indexing child is not profiled) ---",
        flush=True,
    )
    code = (
        "import pstats, sys; s = pstats.Stats(sys.argv[1]); "
        "s.sort_stats('cumulative').print_stats(30); s.sort_stats('tottime').print_stats(15)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(prof)], env=_child_env(), cwd=work, check=False
    )
    _clear(out)


# ------------------------------------------------------------ reporting


def _med(m: Measure | None, key: str) -> float:
    if m is None or not m.runs:
        return float("nan")
    return statistics.median(r.get(key, float("nan")) for r in m.runs)


def report(ms: list[Measure], check: dict | None, tolerance: float) -> list[dict]:
    by = {m.label: m for m in ms}
    floor, nilearn = by.get("floor"), by.get("nilearn")
    print(
        "\nMedians over repetitions; wall = spawn to exit, cpu = user + system of the\n"
        "child and its waited-for descendants, rss = largest ru_maxrss of any process of\n"
        "the child's tree (os.wait4). /floor: wall over the floor's; nl/app: nilearn's wall\n"
        "over the app's (speed-up); nl rss/app: nilearn's peak RSS over the app's."
    )
    print(
        f"\n{'side':<18}{'n':>3}{'wall s':>9}{'min s':>8}{'cpu s':>8}{'rss MB':>8}"
        f"{'/floor':>8}{'nl/app':>8}{'nl rss/app':>11}"
    )
    for m in ms:
        ratio_floor = ratio_nl = ratio_rss = ""
        if m.kind == "app":
            ratio_floor = f"{_med(m, 'wall') / _med(floor, 'wall'):.2f}x" if floor else ""
            if nilearn:
                ratio_nl = f"{_med(nilearn, 'wall') / _med(m, 'wall'):.1f}x"
                ratio_rss = f"{_med(nilearn, 'rss_mb') / _med(m, 'rss_mb'):.1f}x"
        elif m.kind == "nilearn" and floor:
            ratio_floor = f"{_med(m, 'wall') / _med(floor, 'wall'):.1f}x"
        print(
            f"{m.label:<18}{len(m.runs):>3}{_med(m, 'wall'):>9.2f}"
            f"{min(r['wall'] for r in m.runs):>8.2f}{_med(m, 'cpu'):>8.2f}"
            f"{_med(m, 'rss_mb'):>8.0f}{ratio_floor:>8}{ratio_nl:>8}{ratio_rss:>11}"
        )
        if "sampled_hwm_mb" in m.runs[0]:
            print(
                f"{'':<21}sampled from /proc: largest VmHWM {_med(m, 'sampled_hwm_mb'):.0f} MB, "
                f"peak summed RSS of the tree {_med(m, 'sampled_sum_mb'):.0f} MB"
            )
    results = []
    for m in ms:
        if m.kind != "app":
            continue
        if floor:
            x = _med(m, "wall") / _med(floor, "wall")
            results.append(
                (m.label, "<= 1.5x the floor (wall)", f"{x:.2f}x", x <= TARGETS["floor"])
            )
        if nilearn:
            x = _med(nilearn, "wall") / _med(m, "wall")
            results.append(
                (m.label, ">= 12x faster than nilearn", f"{x:.2f}x", x >= TARGETS["speed"])
            )
            x = _med(nilearn, "rss_mb") / _med(m, "rss_mb")
            results.append(
                (m.label, ">= 6x less peak RSS than nilearn", f"{x:.2f}x", x >= TARGETS["memory"])
            )
        x = _med(m, "rss_mb")
        results.append((m.label, "peak RSS <= 120 MB", f"{x:.0f} MB", x <= TARGETS["rss_mb"]))
    pairs = [
        (m, next((o for o in ms if o.kind == "app" and o.nprocs == m.nprocs and o.extra), None))
        for m in ms
        if m.kind == "app" and not m.extra
    ]
    pairs = [(on, off) for on, off in pairs if off is not None]
    if pairs:
        print(
            "\nParticipant reports (issue 15): with reports (the default) over --no-reports;\n"
            "medians, and minima (the least disturbed by other processes on a shared machine)"
        )
        for on, off in pairs:
            n_pages = on.runs[0].get("reports", 0)
            for key, name in (("wall", "wall"), ("cpu", "CPU time")):
                med = _med(on, key) / _med(off, key)
                low = min(r[key] for r in on.runs) / min(r[key] for r in off.runs)
                print(
                    f"  --nprocs {on.nprocs} {name:<8}: median {_med(on, key):6.2f} s / "
                    f"{_med(off, key):6.2f} s = {med:.3f}x; minimum "
                    f"{min(r[key] for r in on.runs):6.2f} s / "
                    f"{min(r[key] for r in off.runs):6.2f} s = {low:.3f}x ({n_pages} pages)"
                )
                if key == "cpu":
                    results.append(
                        (on.label, "reports add <= 20 % (CPU, minima)", f"{low:.3f}x", low <= 1.2)
                    )
    if results:
        print("\nTargets of issues 12 and 15 (whole processes)")
        for label, name, value, ok in results:
            print(f"  {'MET   ' if ok else 'MISSED'} {label:<16} {name:<34} {value}")
    if check is not None:
        print(f"\nAgreement of the timeseries, app vs nilearn (tolerance {tolerance:g}):")
        if "error" in check:
            print(f"  not compared: {check['error']}")
        else:
            runs = check["runs"]
            first = runs[0]
            worst = max((r.get("maxdiff", float("inf")) for r in runs), default=float("nan"))
            for r in [first] + ([] if len(runs) == 1 else [None]):
                if r is None:
                    ok = worst <= tolerance
                    print(
                        f"  all {len(runs)} runs: max |app - nilearn| = {worst:.3g} "
                        f"{'<=' if ok else '>'} {tolerance:g}: {'AGREE' if ok else 'DIFFER'}"
                    )
                    continue
                if "maxdiff" not in r:
                    print(f"  {r['run']}: shapes differ {r['shape']}")
                    continue
                ok = r["maxdiff"] <= tolerance
                print(
                    f"  {r['run']} ({r['shape'][0]} kept volumes x {r['shape'][1]} seeds, "
                    f"max |nilearn| {r['max_abs']:.3g}): max |app - nilearn| = "
                    f"{r['maxdiff']:.3g} (seed #{r['worst_column'] + 1}), "
                    f"{r['columns_over_tol']} seed(s) over the tolerance, "
                    f"n/a seeds app {r['nan_app']} / nilearn {r['nan_nilearn']}: "
                    f"{'AGREE' if ok else 'DIFFER'}"
                )
    return [
        {"side": label, "target": name, "value": value, "met": ok}
        for label, name, value, ok in results
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = cases - {"app", "nilearn", "floor"}
    if unknown:
        raise SystemExit(f"--cases: unknown {sorted(unknown)}; choose among app, nilearn, floor")
    n_volumes, n_subjects, repeats = N_VOLUMES, N_SUBJECTS, args.repeats
    nilearn_repeats = args.nilearn_repeats if args.nilearn_repeats is not None else repeats
    if args.quick:
        n_volumes, n_subjects, repeats, nilearn_repeats = 60, 1, 1, 1
    n_runs = n_subjects * RUNS_PER_SUBJECT
    print(
        f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        work = Path(tmp)
        _CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        _CHILD_CWD.append(str(work))
        data_dir = args.data_dir if args.data_dir is not None else work / "data"
        if args.quick and args.data_dir is not None:
            data_dir = args.data_dir.with_name(args.data_dir.name + "_quick")
        data_dir = data_dir.absolute()
        bolds = prepare_data(data_dir, n_volumes, n_subjects, work)
        versions = _run_child({"kind": "versions"}, work)["versions"]
        print(", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
        print(
            f"dataset: {n_runs} runs of {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels x {n_volumes} "
            f"volumes, {sum(os.path.getsize(b) for b in bolds) / 2**20:.0f} MiB of .nii.gz",
            flush=True,
        )
        ctx = {
            "work": work,
            "bids_dir": data_dir,
            "bolds": bolds,
            "n_runs": n_runs,
            "app_work_dir": work / "app_work" if args.reuse_index else None,
        }
        ms = []
        if "floor" in cases:
            ms.append(Measure("floor", "floor", repeats=repeats))
        if "app" in cases:
            for n in args.nprocs:
                ms.append(Measure(f"app --nprocs {n}", "app", nprocs=n, repeats=repeats))
                if args.reports:
                    label = f"app -n{n} --no-reports"
                    ms.append(Measure(label, "app", n, repeats=repeats, extra=("--no-reports",)))
        if "nilearn" in cases:
            ms.append(Measure("nilearn", "nilearn", repeats=nilearn_repeats))
        warm_cache(data_dir)
        # untimed: bytecode of everything the children import; with --reuse-index the index
        warm = "import isal.igzip, nilearn.maskers, nilearn.interfaces.fmriprep, pandas"
        _run_child({"kind": "import", "code": warm}, work)
        if "app" in cases:
            measure_once(Measure("warm-up", "app", nprocs=1), ctx, False)
        if args.profile:
            profile_app(ctx)
        print(
            f"\nindex: {'reused (-w kept between repetitions)' if args.reuse_index else 'fresh'}"
            f" each repetition; load average before: "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        t_run = time.perf_counter()
        run_all(ms, ctx, args.check_rss)
        print(
            f"measurements took {time.perf_counter() - t_run:.0f} s; load average after: "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; this script's own peak RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
            flush=True,
        )
        check = None
        app_m = next((m for m in ms if m.kind == "app"), None)
        if app_m is not None and "nilearn" in cases:
            spec = {
                "kind": "check",
                "app_out": str(work / f"out_app_np{app_m.nprocs}"),
                "nilearn_out": str(work / "out_nilearn"),
                "tolerance": args.tolerance,
            }
            check = _run_child(spec, work)
        targets = report(ms, check, args.tolerance)
        if args.quick:
            print("(--quick: 2 short runs; the targets are meant for the full 8 x 240 dataset)")
        if args.keep:
            for name in [f"out_app_np{n}" for n in args.nprocs] + ["out_nilearn"]:
                if (work / name).exists():
                    shutil.copytree(work / name, args.keep / name, dirs_exist_ok=True)
        if args.json:
            raw = {
                "versions": versions,
                "args": {k: str(v) for k, v in vars(args).items()},
                "dataset": {"shape": SHAPE, "n_volumes": n_volumes, "n_runs": n_runs},
                "measures": [
                    {"label": m.label, "kind": m.kind, "nprocs": m.nprocs, "runs": m.runs}
                    for m in ms
                ],
                "agreement": check,
                "targets": targets,
            }
            args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
