"""A small, deterministic fMRIPrep-like dataset for demonstrations and tests.

What :func:`build_dataset` promises
-----------------------------------
* **Same bytes every time.**  For the same arguments every file is identical:
  the random generator is seeded per run from ``seed``, gzip headers carry
  ``mtime=0`` and no file name, and JSON/TSV text is formatted explicitly.
  (Bytes may differ between machines with other isal/zlib or LAPACK builds.)
* **Honest geometry.**  BOLD runs live on a coarse grid aligned with
  MNI152NLin2009cAsym: 4 mm isotropic voxels, shape ``(49, 58, 49)``, origin
  ``(-96, -132, -78)`` mm -- the bounding box of the template's 2 mm grid at half
  the resolution.  Because the voxels are not the template's 1 or 2 mm, file
  names carry **no** ``res`` entity.  Data are float32 (rounded to whole
  numbers so the files compress), gzip level 1; a 100-volume run is about 4.6 MB.
* **A brain and its signals.**  The brain mask is an ellipsoid (centre
  ``(0, -18, 20)`` mm, semi-axes ``(66, 96, 60)`` mm).  Inside it each voxel
  holds a baseline near 1000, white noise (SD 8), a slow drift spanned by the
  ``cosine`` regressors, motion-related contamination (a spatially smooth
  linear function of the six motion parameters), a physiological component
  strongest in a "ventricle" ellipsoid, intensity spikes at the high-motion
  volumes and brighter non-steady-state volumes at the start.  Planted network
  signals (amplitude 20, Gaussian fall-off of 6 mm, limited to 12 mm) sit at
  the seeds of :data:`DEMO_SEEDS`: the pairs in :data:`PLANTED_PAIRS` share one
  signal, every other seed carries its own.  The planted signals are exactly
  orthogonal to each other and to every nuisance regressor in the confounds
  file.  At the seed-centre voxels, regressing the motion, cosine and
  ``motion_outlier`` columns (non-steady volumes dropped) leaves correlations
  of about 0.8-0.9 within the pairs and below 0.3 in absolute value elsewhere,
  while the raw data show large drift- and motion-driven correlations.
* **fMRIPrep's file names and confounds.**  ``desc-confounds_timeseries.tsv``
  uses the column names of fMRIPrep >= 21 (``n/a`` in the first row of
  derivative, FD and DVARS columns), and its JSON sidecar carries CompCor
  metadata (``Method``, ``Mask``, ``Retained``, ``SingularValue``,
  ``VarianceExplained``, ``CumulativeVarianceExplained``) computed from the
  data by SVD, in the form nilearn's ``load_confounds`` reads.  Fixed counts are
  retained (6 combined aCompCor, 3 CSF, 3 WM, 3 tCompCor); one further
  component per kind is listed as ``dropped_N`` with ``Retained: false``.
  ``dvars`` is the RMS of the volume-to-volume difference inside the brain
  mask, ``std_dvars`` that value divided by its median, and ``rmsd`` an
  approximation (RMS of the parameter differences, rotations at 50 mm).
* **Decoys an app must ignore**: the same run in ``space-T1w`` (a coarse 8 mm
  grid without planted signals), a CIFTI-like ``space-fsLR_den-91k``
  ``.dtseries.nii`` (a tiny NIfTI-2 file), a transform ``.txt``, ``anat/``
  files (including placeholder ``.h5`` and ``.surf.gii`` files whose content
  is not real), ``figures/``, ``log/``, ``logs/`` and ``sub-XX.html``.

Layouts: ``"derivatives"`` makes ``root`` itself the fMRIPrep derivative
dataset; ``"raw+derivatives"`` makes ``root`` a raw BIDS dataset (tiny int16
BOLD runs with sidecars, ``participants.tsv``) with the fMRIPrep outputs under
``root/derivatives/fmriprep``.  The seeds are written to
``<root>/code/demo_seeds.tsv`` with a ``demo_seeds.json`` sidecar.

This module only builds the dataset; the ``bids_spheres-demo`` command that
also runs the app on it is :func:`bids_spheres.app.cli.demo_main`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from bids_spheres.errors import UsageError

try:  # isal (a dependency) compresses ~5x faster than zlib at the same level
    from isal.igzip import compress as _gzip_compress
except ImportError:  # pragma: no cover - isal missing
    from gzip import compress as _gzip_compress

__all__ = [
    "DEMO_SEEDS",
    "FMRIPREP_VERSION",
    "GRID_AFFINE",
    "GRID_SHAPE",
    "INDEPENDENT_SEEDS",
    "PLANTED_PAIRS",
    "SPACE",
    "DemoInfo",
    "DemoSeed",
    "build_dataset",
    "world_to_voxel",
]

SPACE = "MNI152NLin2009cAsym"
TASK = "rest"
FMRIPREP_VERSION = "23.2.1"
BIDS_VERSION = "1.9.0"

VOXEL_SIZE_MM = 4.0
GRID_SHAPE: tuple[int, int, int] = (49, 58, 49)
GRID_ORIGIN_MM: tuple[float, float, float] = (-96.0, -132.0, -78.0)
GRID_AFFINE = np.array(
    [
        [VOXEL_SIZE_MM, 0.0, 0.0, GRID_ORIGIN_MM[0]],
        [0.0, VOXEL_SIZE_MM, 0.0, GRID_ORIGIN_MM[1]],
        [0.0, 0.0, VOXEL_SIZE_MM, GRID_ORIGIN_MM[2]],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
GRID_AFFINE.setflags(write=False)

BRAIN_CENTER_MM = (0.0, -18.0, 20.0)
BRAIN_SEMI_AXES_MM = (66.0, 96.0, 60.0)
VENTRICLE_CENTER_MM = (0.0, -14.0, 16.0)
VENTRICLE_SEMI_AXES_MM = (10.0, 22.0, 10.0)
WM_SEMI_AXES_MM = (44.0, 64.0, 40.0)

N_NONSTEADY = 2
BASELINE = 1000.0
NOISE_SD = 8.0
SIGNAL_AMPLITUDE = 20.0
SIGNAL_SIGMA_MM = 6.0
SIGNAL_EXTENT_MM = 12.0
FD_THRESHOLD_MM = 0.5
MIN_VOLUMES = 40
_GZIP_LEVEL = 1


@dataclass(frozen=True)
class DemoSeed:
    """One demo seed: a sphere in MNI152NLin2009cAsym millimetres."""

    name: str
    x: float
    y: float
    z: float
    radius: float
    network: str

    @property
    def xyz(self) -> tuple[float, float, float]:
        """The centre as an ``(x, y, z)`` tuple in mm."""
        return (self.x, self.y, self.z)


DEMO_SEEDS: tuple[DemoSeed, ...] = (
    DemoSeed("PCC", 0, -52, 26, 8, "DefaultMode"),
    DemoSeed("mPFC", 0, 52, -6, 8, "DefaultMode"),
    DemoSeed("LMotor", -38, -22, 56, 8, "Somatomotor"),
    DemoSeed("RMotor", 38, -22, 56, 8, "Somatomotor"),
    DemoSeed("LVisual", -20, -90, 0, 8, "Visual"),
    DemoSeed("RVisual", 20, -90, 0, 8, "Visual"),
    DemoSeed("LDLPFC", -44, 36, 20, 8, "FrontoParietal"),
    DemoSeed("RIPS", 38, -56, 48, 8, "DorsalAttention"),
)
"""The seeds written to ``code/demo_seeds.tsv``."""

PLANTED_PAIRS: tuple[tuple[str, str], ...] = (("PCC", "mPFC"), ("LMotor", "RMotor"))
"""Seed pairs that share one planted signal; every other seed is independent."""

INDEPENDENT_SEEDS: tuple[str, ...] = tuple(
    s.name for s in DEMO_SEEDS if not any(s.name in pair for pair in PLANTED_PAIRS)
)

_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class DemoInfo:
    """What :func:`build_dataset` wrote, for the app and for tests.

    Attributes
    ----------
    root : Path
        The dataset root passed to :func:`build_dataset` (the ``bids_dir``).
    fmriprep_dir : Path
        The fMRIPrep derivative dataset (``root`` or ``root/derivatives/fmriprep``).
    seeds_tsv : Path
        ``code/demo_seeds.tsv`` (columns ``name x y z radius network``).
    layout : str
        ``"derivatives"`` or ``"raw+derivatives"``.
    subjects, sessions : tuple of str
        Labels without prefix; ``sessions`` is empty when there is no session level.
    runs : tuple of int
        Run indices of every subject (and session).
    task, space : str
        ``"rest"`` and ``"MNI152NLin2009cAsym"``.
    planted_pairs : tuple of (str, str)
        Seed pairs sharing a planted signal.
    independent_seeds : tuple of str
        Seeds carrying their own signal.
    t_r : float
        Repetition time in seconds.
    n_volumes, n_nonsteady : int
        Volumes per run, and how many of the first are non-steady-state.
    bold_files : tuple of Path
        Every ``space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz`` written, sorted.
    """

    root: Path
    fmriprep_dir: Path
    seeds_tsv: Path
    layout: str
    subjects: tuple[str, ...]
    sessions: tuple[str, ...]
    runs: tuple[int, ...]
    task: str
    space: str
    planted_pairs: tuple[tuple[str, str], ...]
    independent_seeds: tuple[str, ...]
    t_r: float
    n_volumes: int
    n_nonsteady: int
    bold_files: tuple[Path, ...]


def build_dataset(
    root: os.PathLike | str,
    *,
    layout: Literal["derivatives", "raw+derivatives"] = "derivatives",
    n_subjects: int = 2,
    n_runs: int = 2,
    sessions: Sequence[str] | str | None = None,
    n_volumes: int = 100,
    t_r: float = 2.0,
    seed: int = 0,
) -> DemoInfo:
    """Write the demo dataset under ``root`` and describe it.

    Parameters
    ----------
    root : path-like
        Directory to create; it must not exist or be empty.
    layout : {"derivatives", "raw+derivatives"}
        Whether ``root`` is the fMRIPrep dataset itself, or a raw BIDS dataset
        holding the fMRIPrep outputs in ``derivatives/fmriprep``.
    n_subjects, n_runs : int
        Subjects ``01, 02, ...`` and runs ``1, 2, ...`` (each at least 1).
    sessions : sequence of str or str, optional
        Session labels (without ``ses-``); ``None`` for no session level.
    n_volumes : int
        Volumes per run (at least 40, so the nuisance regressors leave room
        for the planted signals).
    t_r : float
        Repetition time in seconds (positive).
    seed : int
        Seed of the random generator; the same seed gives the same bytes.

    Returns
    -------
    DemoInfo
        Paths, labels and the planted truth.

    Raises
    ------
    UsageError
        If an argument is out of range or ``root`` is a non-empty directory.
    """
    if layout not in ("derivatives", "raw+derivatives"):
        raise UsageError(
            f"demo layout {layout!r} is unknown; use 'derivatives' or 'raw+derivatives'"
        )
    _check_int("n_subjects", n_subjects, 1, 999)
    _check_int("n_runs", n_runs, 1, 99)
    _check_int("n_volumes", n_volumes, MIN_VOLUMES, 10_000)
    _check_int("seed", seed, 0, 2**63 - 1)
    if not isinstance(t_r, (int, float)) or isinstance(t_r, bool) or not 0 < t_r < 100:
        raise UsageError(f"demo t_r={t_r!r} is not a repetition time; give seconds in (0, 100)")
    if isinstance(sessions, str):
        sessions = [sessions]
    session_labels = tuple(sessions) if sessions is not None else ()
    for ses in session_labels:
        if not isinstance(ses, str) or not _LABEL.match(ses):
            raise UsageError(
                f"demo session label {ses!r} is not alphanumeric; give labels like '01'"
            )
    if len(set(session_labels)) != len(session_labels):
        raise UsageError(f"demo session labels {list(session_labels)} repeat; give each once")

    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(
            f"demo root {root} exists and is not an empty directory; choose a new path"
        )
    root.mkdir(parents=True, exist_ok=True)

    fmriprep_dir = root if layout == "derivatives" else root / "derivatives" / "fmriprep"
    fmriprep_dir.mkdir(parents=True, exist_ok=True)
    width = 2 if n_subjects < 100 else 3
    subjects = tuple(f"{i + 1:0{width}d}" for i in range(n_subjects))
    runs = tuple(range(1, n_runs + 1))
    t_r = float(t_r)

    brain = _Brain.build()
    seeds_tsv = _write_seeds(root / "code")
    _write_fmriprep_description(fmriprep_dir, raw=layout == "raw+derivatives")
    if layout == "raw+derivatives":
        _write_raw_top(root, subjects)

    bold_files: list[Path] = []
    ses_iter: tuple[str | None, ...] = session_labels or (None,)
    for i_sub, sub in enumerate(subjects):
        _write_subject_decoys(fmriprep_dir, sub, ses_iter, runs)
        for i_ses, ses in enumerate(ses_iter):
            for run in runs:
                rng = np.random.default_rng([seed, i_sub, i_ses, run])
                prefix = _prefix(sub, ses, run)
                func = fmriprep_dir / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
                func.mkdir(parents=True, exist_ok=True)
                bold_files.append(_write_run(func, prefix, brain, rng, n_volumes, t_r))
                if layout == "raw+derivatives":
                    raw_func = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
                    _write_raw_run(raw_func, prefix, rng, n_volumes, t_r)

    return DemoInfo(
        root=root,
        fmriprep_dir=fmriprep_dir,
        seeds_tsv=seeds_tsv,
        layout=layout,
        subjects=subjects,
        sessions=session_labels,
        runs=runs,
        task=TASK,
        space=SPACE,
        planted_pairs=PLANTED_PAIRS,
        independent_seeds=INDEPENDENT_SEEDS,
        t_r=t_r,
        n_volumes=n_volumes,
        n_nonsteady=N_NONSTEADY,
        bold_files=tuple(sorted(bold_files)),
    )


def world_to_voxel(xyz: Sequence[float]) -> tuple[int, int, int]:
    """Return the demo grid voxel nearest to a point given in mm.

    Parameters
    ----------
    xyz : sequence of float
        World coordinates in mm (MNI152NLin2009cAsym).

    Returns
    -------
    tuple of int
        ``(i, j, k)`` indices into :data:`GRID_SHAPE`.
    """
    ijk = np.rint((np.asarray(xyz, dtype=float) - np.asarray(GRID_ORIGIN_MM)) / VOXEL_SIZE_MM)
    return (int(ijk[0]), int(ijk[1]), int(ijk[2]))


# --------------------------------------------------------------------------- private helpers


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise UsageError(
            f"demo {name}={value!r} is not an integer; give an integer in [{low}, {high}]"
        )
    if not low <= int(value) <= high:
        raise UsageError(
            f"demo {name}={value} is out of range; give an integer in [{low}, {high}]"
        )


def _prefix(sub: str, ses: str | None, run: int) -> str:
    ses_part = f"_ses-{ses}" if ses else ""
    return f"sub-{sub}{ses_part}_task-{TASK}_run-{run}"


def _ellipsoid(xyz: np.ndarray, center: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    rel = (xyz - np.asarray(center)) / np.asarray(semi)
    return np.einsum("...i,...i->...", rel, rel) <= 1.0


@dataclass(frozen=True)
class _Brain:
    """Fixed anatomy of the demo grid (the same for every run)."""

    mask: np.ndarray  # bool, GRID_SHAPE
    xyz: np.ndarray  # (n_vox, 3) mm coordinates of mask voxels, in mask order
    csf: np.ndarray  # bool over mask voxels
    wm: np.ndarray  # bool over mask voxels
    baseline: np.ndarray  # (n_vox,)
    loadings: np.ndarray  # (n_vox, n_signals) planted-signal weights
    motion_weights: np.ndarray  # (n_vox, 6) intensity per mm / per rad
    physio_weights: np.ndarray  # (n_vox, 2)
    spike_weights: np.ndarray  # (n_vox,)

    @classmethod
    def build(cls) -> _Brain:
        ijk = np.indices(GRID_SHAPE).reshape(3, -1).T.astype(float)
        world = ijk * VOXEL_SIZE_MM + np.asarray(GRID_ORIGIN_MM)
        mask_flat = _ellipsoid(world, BRAIN_CENTER_MM, BRAIN_SEMI_AXES_MM)
        # C-order flattening of np.indices matches boolean indexing of the 3-D mask.
        mask = mask_flat.reshape(GRID_SHAPE)
        xyz = world[mask_flat]
        rel = (xyz - np.asarray(BRAIN_CENTER_MM)) / np.asarray(BRAIN_SEMI_AXES_MM)

        csf = _ellipsoid(xyz, VENTRICLE_CENTER_MM, VENTRICLE_SEMI_AXES_MM)
        near_seed = np.zeros(len(xyz), dtype=bool)
        for s in DEMO_SEEDS:
            near_seed |= np.linalg.norm(xyz - np.asarray(s.xyz), axis=1) < 20.0
        wm = _ellipsoid(xyz, BRAIN_CENTER_MM, WM_SEMI_AXES_MM) & ~csf & ~near_seed

        baseline = BASELINE * (
            1.0
            + 0.06 * np.cos(np.pi * rel[:, 0]) * np.cos(0.5 * np.pi * rel[:, 1])
            - 0.04 * rel[:, 2]
        )
        baseline[csf] *= 1.3

        # Planted signals: one per pair, one per independent seed.
        groups: list[tuple[str, ...]] = [*PLANTED_PAIRS, *((name,) for name in INDEPENDENT_SEEDS)]
        loadings = np.zeros((len(xyz), len(groups)))
        by_name = {s.name: s for s in DEMO_SEEDS}
        for col, group in enumerate(groups):
            for name in group:
                dist = np.linalg.norm(xyz - np.asarray(by_name[name].xyz), axis=1)
                weight = np.exp(-(dist**2) / (2 * SIGNAL_SIGMA_MM**2))
                weight[dist > SIGNAL_EXTENT_MM] = 0.0
                loadings[:, col] += SIGNAL_AMPLITUDE * weight

        # Motion contamination: smooth linear fields, fixed directions.
        directions = np.array(
            [
                [0.9, 0.3, -0.2, 0.3],
                [-0.2, 0.8, 0.5, -0.2],
                [0.4, -0.3, 0.9, 0.4],
                [-0.6, 0.5, 0.3, -0.3],
                [0.3, 0.7, -0.6, 0.2],
                [0.7, -0.4, -0.5, -0.4],
            ]
        )
        per_mm = 120.0
        motion_weights = per_mm * (rel @ directions[:, :3].T + directions[:, 3])
        motion_weights[:, 3:] *= 50.0  # radians at a 50 mm lever arm

        physio_weights = np.full((len(xyz), 2), 3.0)
        physio_weights[:, 1] *= -0.5
        physio_weights[csf] *= 12.0
        spike_weights = -25.0 * (1.0 + 0.5 * rel[:, 2])
        return cls(
            mask, xyz, csf, wm, baseline, loadings, motion_weights, physio_weights, spike_weights
        )


def _bandpass_noise(rng: np.random.Generator, n: int, t_r: float, k: int) -> np.ndarray:
    """Return ``k`` columns of white noise keeping only 0.01-0.1 Hz."""
    spectrum = np.fft.rfft(rng.standard_normal((n, k)), axis=0)
    freqs = np.fft.rfftfreq(n, d=t_r)
    spectrum[(freqs < 0.01) | (freqs > 0.1)] = 0.0
    return np.fft.irfft(spectrum, n=n, axis=0)


def _cosines(n: int, t_r: float, n_skip: int) -> np.ndarray:
    """DCT high-pass basis (periods down to ~128 s), zero on the first ``n_skip`` rows."""
    n_steady = n - n_skip
    count = int(np.floor(2 * n_steady * t_r / 128.0)) + 1
    t = np.arange(n_steady)
    basis = np.zeros((n, count))
    for k in range(1, count + 1):
        basis[n_skip:, k - 1] = np.sqrt(2.0 / n_steady) * np.cos(np.pi / n_steady * (t + 0.5) * k)
    return basis


def _motion(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return motion parameters (n, 6) and the volumes with a head jerk."""
    steps = rng.standard_normal((n, 6)) * np.array([0.02, 0.02, 0.025, 3e-4, 3e-4, 3e-4])
    params = np.cumsum(steps, axis=0)
    kernel = np.ones(3) / 3.0
    params = np.column_stack([np.convolve(p, kernel, mode="same") for p in params.T])
    params -= params[N_NONSTEADY]
    # Three jerks, well apart, never in the non-steady volumes nor the last two.
    bounds = np.linspace(N_NONSTEADY + 3, n - 3, 4).astype(int)
    jerks = np.array([rng.integers(lo, hi) for lo, hi in itertools.pairwise(bounds)])
    params[jerks, 2] += 0.5
    params[jerks, 3] += 0.004
    return params, jerks


def _framewise_displacement(params: np.ndarray) -> np.ndarray:
    diff = np.abs(np.diff(params, axis=0))
    fd = diff[:, :3].sum(axis=1) + 50.0 * diff[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def _orthonormal_signals(raw: np.ndarray, nuisance: np.ndarray, steady: np.ndarray) -> np.ndarray:
    """Project ``raw`` off ``nuisance``, orthogonalise, scale to unit SD over ``steady``."""
    q, _ = np.linalg.qr(nuisance)
    resid = raw - q @ (q.T @ raw)
    qs, _ = np.linalg.qr(resid)
    return qs / qs[steady].std(axis=0)


def _compcor(
    data: np.ndarray, detrend: np.ndarray, n_skip: int, n_keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CompCor on ``data`` (time x voxels): components, singular values, variance explained."""
    y = data[n_skip:]
    q, _ = np.linalg.qr(detrend[n_skip:])
    y = y - q @ (q.T @ y)
    sd = y.std(axis=0)
    y = y[:, sd > 0] / sd[sd > 0]
    # Left singular vectors from the small time-by-time Gram matrix (fast for many voxels).
    eigval, eigvec = np.linalg.eigh(y @ y.T)
    order = np.argsort(eigval)[::-1]
    s = np.sqrt(np.clip(eigval[order], 0.0, None))
    u = eigvec[:, order[: n_keep + 1]]
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    u = u * signs
    comps = np.zeros((data.shape[0], u.shape[1]))
    comps[n_skip:] = u
    var = s**2 / np.sum(s**2)
    return comps, s[: n_keep + 1], var[: n_keep + 1]


def _write_run(
    func: Path, prefix: str, brain: _Brain, rng: np.random.Generator, n: int, t_r: float
) -> Path:
    """Write one run's MNI outputs, confounds and func decoys; return the preproc BOLD."""
    n_vox = len(brain.xyz)
    steady = np.arange(n) >= N_NONSTEADY
    params, jerks = _motion(rng, n)
    fd = _framewise_displacement(params)
    outliers = np.flatnonzero(fd > FD_THRESHOLD_MM)
    cosines = _cosines(n, t_r, N_NONSTEADY)
    nonsteady_cols = np.eye(n)[:, :N_NONSTEADY]
    spike_cols = np.eye(n)[:, jerks]
    physio = rng.standard_normal((n, 2))
    physio[:, 1] = np.convolve(physio[:, 1], np.ones(4) / 2.0, mode="same")

    nuisance = np.column_stack(
        [np.ones(n), nonsteady_cols, cosines, params, spike_cols, np.eye(n)[:, outliers], physio]
    )
    n_signals = brain.loadings.shape[1]
    signals = _orthonormal_signals(_bandpass_noise(rng, n, t_r, n_signals), nuisance, steady)

    nonsteady_boost = np.zeros(n)
    nonsteady_boost[:N_NONSTEADY] = [0.6, 0.25][:N_NONSTEADY]
    spikes = np.zeros(n)
    spikes[jerks] = 1.0
    # Unit-norm cosines scaled to unit amplitude: a drift of ~drift_amp over the run.
    drift_shape = cosines @ np.linspace(1.0, 0.3, cosines.shape[1])
    drift_shape *= np.sqrt((n - N_NONSTEADY) / 2)
    drift_amp = rng.normal(0.0, 30.0, n_vox)

    data = brain.baseline[:, None] * (1.0 + nonsteady_boost)[None, :]
    data += drift_amp[:, None] * drift_shape[None, :]
    data += brain.motion_weights @ params.T
    data += brain.physio_weights @ physio.T
    data += brain.spike_weights[:, None] * spikes[None, :]
    data += brain.loadings @ signals.T
    data += rng.normal(0.0, NOISE_SD, (n_vox, n))
    data = np.rint(data).astype(np.float32)  # whole numbers compress ~3x better

    volume = np.zeros((*GRID_SHAPE, n), dtype=np.float32)
    volume[brain.mask] = data
    space = f"{prefix}_space-{SPACE}"
    bold = func / f"{space}_desc-preproc_bold.nii.gz"
    _write_nifti(bold, volume, GRID_AFFINE, t_r=t_r, code=4)
    _write_json(
        func / f"{space}_desc-preproc_bold.json",
        {"RepetitionTime": t_r, "SkullStripped": True, "TaskName": TASK},
    )
    _write_nifti(
        func / f"{space}_desc-brain_mask.nii.gz", brain.mask.astype(np.uint8), GRID_AFFINE, code=4
    )
    boldref = np.zeros(GRID_SHAPE, dtype=np.float32)
    boldref[brain.mask] = data[:, steady].mean(axis=1)
    _write_nifti(func / f"{space}_boldref.nii.gz", boldref, GRID_AFFINE, code=4)

    _write_confounds(
        func, prefix, data.T.astype(np.float64), brain, params, fd, outliers, cosines, t_r
    )
    _write_func_decoys(func, prefix, rng, n, t_r)
    return bold


def _write_confounds(
    func: Path,
    prefix: str,
    data: np.ndarray,
    brain: _Brain,
    params: np.ndarray,
    fd: np.ndarray,
    outliers: np.ndarray,
    cosines: np.ndarray,
    t_r: float,
) -> None:
    """Write ``desc-confounds_timeseries.tsv`` and ``.json`` like fMRIPrep >= 21."""
    n = data.shape[0]
    columns: dict[str, np.ndarray] = {}

    def with_expansions(name: str, values: np.ndarray) -> None:
        deriv = np.concatenate([[np.nan], np.diff(values)])
        columns[name] = values
        columns[f"{name}_derivative1"] = deriv
        columns[f"{name}_derivative1_power2"] = deriv**2
        columns[f"{name}_power2"] = values**2

    combined = brain.csf | brain.wm
    with_expansions("global_signal", data.mean(axis=1))
    with_expansions("csf", data[:, brain.csf].mean(axis=1))
    with_expansions("white_matter", data[:, brain.wm].mean(axis=1))
    columns["csf_wm"] = data[:, combined].mean(axis=1)

    detrend = np.column_stack([np.ones(n), cosines])
    q, _ = np.linalg.qr(detrend[N_NONSTEADY:])
    steady = data[N_NONSTEADY:]
    temporal_sd = (steady - q @ (q.T @ steady)).std(axis=0)
    n_top = max(1, int(np.ceil(0.02 * data.shape[1])))
    top = np.argsort(temporal_sd, kind="stable")[-n_top:]
    columns["tcompcor"] = data[:, top].mean(axis=1)

    diff = np.diff(data, axis=0)
    dvars = np.sqrt(np.mean(diff**2, axis=1))
    columns["std_dvars"] = np.concatenate([[np.nan], dvars / np.median(dvars)])
    columns["dvars"] = np.concatenate([[np.nan], dvars])
    columns["framewise_displacement"] = fd
    pdiff = np.diff(params, axis=0) * np.array([1, 1, 1, 50, 50, 50])
    columns["rmsd"] = np.concatenate([[np.nan], np.sqrt(np.mean(pdiff**2, axis=1))])

    metadata: dict[str, dict[str, object]] = {}
    dropped = 0
    for prefix_cc, method, mask_name, voxels, n_keep in (
        ("t", "tCompCor", None, top, 3),
        ("c", "aCompCor", "CSF", np.flatnonzero(brain.csf), 3),
        ("w", "aCompCor", "WM", np.flatnonzero(brain.wm), 3),
        ("a", "aCompCor", "combined", np.flatnonzero(combined), 6),
    ):
        comps, sing, var = _compcor(data[:, voxels], detrend, N_NONSTEADY, n_keep)
        cumulative = np.cumsum(var)
        for i in range(n_keep + 1):
            retained = i < n_keep
            key = f"{prefix_cc}_comp_cor_{i:02d}" if retained else f"dropped_{dropped}"
            entry: dict[str, object] = {
                "CumulativeVarianceExplained": round(float(cumulative[i]), 10),
                "Method": method,
                "Retained": retained,
                "SingularValue": round(float(sing[i]), 10),
                "VarianceExplained": round(float(var[i]), 10),
            }
            if mask_name is not None:
                entry["Mask"] = mask_name
            metadata[key] = dict(sorted(entry.items()))
            if retained:
                columns[key] = comps[:, i]
            else:
                dropped += 1
    for i in range(cosines.shape[1]):
        columns[f"cosine{i:02d}"] = cosines[:, i]
    for i in range(N_NONSTEADY):
        columns[f"non_steady_state_outlier{i:02d}"] = np.eye(n)[:, i]
    for i, name in enumerate(_MOTION):
        with_expansions(name, params[:, i])
    for i, vol in enumerate(outliers):
        columns[f"motion_outlier{i:02d}"] = np.eye(n)[:, vol]
    for name in ("global_signal", "csf", "white_matter", "csf_wm", "tcompcor"):
        metadata[name] = {"Method": "Mean"}

    names = list(columns)
    table = np.column_stack([columns[c] for c in names])
    lines = ["\t".join(names)]
    for row in table:
        lines.append("\t".join("n/a" if np.isnan(v) else f"{v:.10g}" for v in row))
    (func / f"{prefix}_desc-confounds_timeseries.tsv").write_text(
        "\n".join(lines) + "\n", encoding="utf-8"
    )
    _write_json(func / f"{prefix}_desc-confounds_timeseries.json", dict(sorted(metadata.items())))


def _write_func_decoys(
    func: Path, prefix: str, rng: np.random.Generator, n: int, t_r: float
) -> None:
    """T1w-space run, CIFTI-like dtseries and a transform: files an app must not pick."""
    shape = (20, 24, 20)
    affine = np.array(
        [[8.0, 0, 0, -80.0], [0, 8.0, 0, -110.0], [0, 0, 8.0, -70.0], [0, 0, 0, 1.0]]
    )
    ijk = np.indices(shape).reshape(3, -1).T * 8.0 + affine[:3, 3]
    mask = _ellipsoid(ijk, BRAIN_CENTER_MM, BRAIN_SEMI_AXES_MM).reshape(shape)
    volume = np.zeros((*shape, n), dtype=np.float32)
    volume[mask] = np.rint(rng.normal(BASELINE, NOISE_SD, (int(mask.sum()), n)))
    t1w = f"{prefix}_space-T1w"
    _write_nifti(func / f"{t1w}_desc-preproc_bold.nii.gz", volume, affine, t_r=t_r, code=1)
    _write_json(
        func / f"{t1w}_desc-preproc_bold.json",
        {"RepetitionTime": t_r, "SkullStripped": True, "TaskName": TASK},
    )
    _write_nifti(func / f"{t1w}_desc-brain_mask.nii.gz", mask.astype(np.uint8), affine, code=1)

    cifti = nib.Nifti2Image(np.zeros((1, 1, 1, 1, n, 8), dtype=np.float32), np.eye(4))
    cifti.header["intent_code"] = 3002  # NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES
    (func / f"{prefix}_space-fsLR_den-91k_bold.dtseries.nii").write_bytes(cifti.to_bytes())
    _write_json(
        func / f"{prefix}_space-fsLR_den-91k_bold.json",
        {"RepetitionTime": t_r, "TaskName": TASK, "grayordinates": "91k"},
    )
    (func / f"{prefix}_from-scanner_to-T1w_mode-image_xfm.txt").write_text(
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: MatrixOffsetTransformBase_double_3_3\n"
        "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n",
        encoding="utf-8",
    )


def _write_subject_decoys(
    fmriprep_dir: Path, sub: str, sessions: Sequence[str | None], runs: Sequence[int]
) -> None:
    """anat/, figures/, log/ and the HTML report of one subject."""
    subdir = fmriprep_dir / f"sub-{sub}"
    anat = subdir / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    t1w = np.full((8, 8, 8), 500.0, dtype=np.float32)
    _write_nifti(anat / f"sub-{sub}_desc-preproc_T1w.nii.gz", t1w, np.diag([16.0] * 3 + [1]))
    _write_nifti(
        anat / f"sub-{sub}_desc-brain_mask.nii.gz",
        np.ones((8, 8, 8), dtype=np.uint8),
        np.diag([16.0] * 3 + [1]),
    )
    # Placeholders: the extensions are real fMRIPrep outputs, the content is not.
    (anat / f"sub-{sub}_from-{SPACE}_to-T1w_mode-image_xfm.h5").write_bytes(
        b"\x89HDF\r\n\x1a\n" + b"bids_spheres demo placeholder, not an HDF5 transform\n"
    )
    (anat / f"sub-{sub}_hemi-L_pial.surf.gii").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<GIFTI Version="1.0" NumberOfDataArrays="0">'
        "</GIFTI>\n",
        encoding="utf-8",
    )
    figures = subdir / "figures"
    figures.mkdir(exist_ok=True)
    for ses in sessions:
        for run in runs:
            (figures / f"{_prefix(sub, ses, run)}_desc-carpetplot_bold.svg").write_text(
                '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>\n',
                encoding="utf-8",
            )
    log = subdir / "log" / "20240101-000000_00000000-0000-0000-0000-000000000000"
    log.mkdir(parents=True, exist_ok=True)
    (log / "fmriprep.toml").write_text(
        f'[environment]\nversion = "{FMRIPREP_VERSION}"\n', encoding="utf-8"
    )
    (fmriprep_dir / f"sub-{sub}.html").write_text(
        f"<html><body>fMRIPrep report for sub-{sub} (demo)</body></html>\n", encoding="utf-8"
    )


def _write_fmriprep_description(fmriprep_dir: Path, *, raw: bool) -> None:
    description: dict[str, object] = {
        "Name": "fMRIPrep - fMRI PREProcessing workflow",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "fMRIPrep",
                "Version": FMRIPREP_VERSION,
                "CodeURL": f"https://github.com/nipreps/fmriprep/archive/{FMRIPREP_VERSION}.tar.gz",
            }
        ],
        "HowToAcknowledge": (
            "Synthetic data written by bids_spheres.app.demo; not real fMRIPrep output."
        ),
    }
    if raw:
        description["SourceDatasets"] = [{"URL": "../../"}]
    _write_json(fmriprep_dir / "dataset_description.json", description)
    logs = fmriprep_dir / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "CITATION.md").write_text(
        "Results included in this manuscript come from a synthetic demo.\n", encoding="utf-8"
    )


def _write_raw_top(root: Path, subjects: Sequence[str]) -> None:
    _write_json(
        root / "dataset_description.json",
        {"Name": "bids_spheres demo (raw)", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw"},
    )
    rows = ["participant_id\tage\tsex"]
    for i, sub in enumerate(subjects):
        rows.append(f"sub-{sub}\t{20 + (7 * i) % 40}\t{'FM'[i % 2]}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "README").write_text(
        "Synthetic resting-state dataset written by bids_spheres.app.demo.build_dataset.\n",
        encoding="utf-8",
    )
    for sub in subjects:
        anat = root / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        _write_nifti(
            anat / f"sub-{sub}_T1w.nii.gz",
            np.full((8, 8, 8), 300, dtype=np.int16),
            np.diag([16.0] * 3 + [1]),
            code=1,
        )


def _write_raw_run(func: Path, prefix: str, rng: np.random.Generator, n: int, t_r: float) -> None:
    """A tiny scanner-space int16 run with its sidecar."""
    func.mkdir(parents=True, exist_ok=True)
    affine = np.diag([8.0, 8.0, 10.0, 1.0])
    affine[:3, 3] = [-60.0, -80.0, -40.0]
    data = rng.normal(500.0, 20.0, (16, 16, 8, n)).round().astype(np.int16)
    _write_nifti(func / f"{prefix}_bold.nii.gz", data, affine, t_r=t_r, code=1)
    _write_json(
        func / f"{prefix}_bold.json",
        {"RepetitionTime": t_r, "TaskName": TASK, "EchoTime": 0.03},
    )


def _write_seeds(code: Path) -> Path:
    code.mkdir(parents=True, exist_ok=True)
    lines = ["name\tx\ty\tz\tradius\tnetwork"]
    for s in DEMO_SEEDS:
        lines.append(f"{s.name}\t{s.x:g}\t{s.y:g}\t{s.z:g}\t{s.radius:g}\t{s.network}")
    tsv = code / "demo_seeds.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(
        code / "demo_seeds.json",
        {
            "Space": SPACE,
            "Description": "Seeds of the bids_spheres demo dataset.",
            "PlantedPairs": [list(p) for p in PLANTED_PAIRS],
            "IndependentSeeds": list(INDEPENDENT_SEEDS),
            "x": {"Units": "mm"},
            "y": {"Units": "mm"},
            "z": {"Units": "mm"},
            "radius": {"Units": "mm"},
        },
    )
    return tsv


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    t_r: float | None = None,
    code: int = 1,
) -> None:
    """Write a NIfTI-1 file; ``.gz`` files are gzipped with ``mtime=0`` (reproducible)."""
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_xyzt_units("mm", "sec")
    if t_r is not None:
        zooms = list(header.get_zooms())
        zooms[3] = t_r
        header.set_zooms(zooms)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    payload = img.to_bytes()
    if path.name.endswith(".gz"):
        payload = _gzip_compress(payload, compresslevel=_GZIP_LEVEL, mtime=0)
    path.write_bytes(payload)
