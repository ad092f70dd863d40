"""RunConfig: every setting of one bids_spheres invocation, built once, frozen.

Promise
-------
:meth:`RunConfig.from_args` turns parsed command-line arguments into a frozen
dataclass after the checks that involve several arguments (``high_pass <
low_pass``; output_dir not the input dataset; a readable filter file;
``--space`` syntax; ``--radius`` from 0 to
:data:`~bids_spheres.app.seeds.MAX_RADIUS_MM`; a ``--dask-scheduler`` address
that :func:`parse_dask_address` accepts), raising
:class:`~bids_spheres.errors.UsageError` with the fix; ``--nprocs`` not given
is :func:`available_cpus`.
:meth:`RunConfig.cleaning_parameters` is the part that defines the numbers
written (used for provenance and for the "already finished" check);
:meth:`RunConfig.to_json` is everything, for provenance.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bids_spheres.app.filters import load_filter_file
from bids_spheres.app.seeds import MAX_RADIUS_MM
from bids_spheres.errors import UsageError

__all__ = ["RunConfig", "available_cpus", "parse_dask_address", "parse_space"]

_SPACE = re.compile(r"^[A-Za-z0-9]+$")
_MODIFIER = re.compile(r"^(?P<key>cohort|res)-(?P<value>[A-Za-z0-9]+)$")

_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_DASK_ADDRESS = re.compile(
    rf"^(?:(?P<scheme>tcp|tls|ws|wss|ucx)://(?P<host>{_HOST})(?::(?P<port>\d{{1,5}}))?"
    rf"|(?P<bare>{_HOST}):(?P<bare_port>\d{{1,5}})"
    r"|inproc://\S+)$"
)


def parse_space(text: str) -> tuple[str, str | None, str | None]:
    """Split fMRIPrep's ``SPACE[:cohort-C][:res-N]`` into (space, cohort, res).

    TemplateFlow's ``cohort`` names a variant of a template
    (``MNIPediatricAsym:cohort-1:res-2``); the modifiers may come in either
    order, each at most once.
    """
    name, *modifiers = text.split(":")
    found: dict[str, str] = {}
    for modifier in modifiers:
        match = _MODIFIER.match(modifier)
        if match is None or match["key"] in found:
            break
        found[match["key"]] = match["value"]
    else:
        if _SPACE.match(name):
            return name, found.get("cohort"), found.get("res")
    raise UsageError(
        f"--space {text!r} is not valid; give a template name with an optional cohort and "
        "resolution, e.g. MNI152NLin2009cAsym, MNI152NLin2009cAsym:res-2 or "
        "MNIPediatricAsym:cohort-1:res-2"
    )


def parse_dask_address(text: str) -> str:
    """Check a Dask scheduler address: ``SCHEME://HOST[:PORT]``, ``HOST:PORT`` or ``inproc://...``.

    SCHEME is one of distributed's network schemes (tcp, tls, ws, wss, ucx); HOST a
    name, an IPv4 address or a bracketed IPv6 address; PORT 1-65535. Anything else
    (a typo, a URL with a path, a bare word) is a
    :class:`~bids_spheres.errors.UsageError` before any connection is tried.
    """
    match = _DASK_ADDRESS.match(text.strip())
    port = match and (match["port"] or match["bare_port"])
    if not match or (port is not None and not 0 < int(port) < 65536):
        raise UsageError(
            f"--dask-scheduler {text!r} is not a Dask scheduler address; give "
            "tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786), HOST:PORT, tls://HOST:PORT or "
            "inproc://..."
        )
    return text.strip()


@dataclass(frozen=True)
class RunConfig:
    """Settings of one invocation (see ``bids_spheres --help`` for each)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] | None = None
    session_label: tuple[str, ...] | None = None
    task: tuple[str, ...] | None = None
    run: tuple[str, ...] | None = None
    space: str = "MNI152NLin2009cAsym"
    res: str | None = None
    cohort: str | None = None
    #: ``--space SPACE:res-native``: the BOLD's own grid (files with no ``res`` entity)
    res_native: bool = False
    bids_filters: dict[str, Any] | None = None
    derivatives: Path | None = None
    seeds: str = "power2011"
    radius: float = 5.0
    allow_overlap: bool = False
    mask: str = "fmriprep"
    min_coverage: float = 0.5
    denoise_strategy: str = "simple"
    fd_threshold: float | None = None
    dvars_threshold: float | None = None
    dummy_scans: int | None = None
    smoothing_fwhm: float | None = None
    standardize: str | None = "zscore_sample"
    detrend: bool = True
    high_pass: float | None = None
    low_pass: float | None = None
    maps: bool = False
    map_seeds: tuple[str, ...] | None = None
    max_mean_fd: float = 0.5
    min_volumes: int = 50
    nprocs: int = 1
    dask_scheduler: str | None = None
    bids_database_dir: Path | None = None
    overwrite: bool = False
    #: per-participant HTML reports (OUTPUT_DIR/sub-<label>.html); off with --no-reports
    reports: bool = True
    skip_bids_validator: bool = False
    verbose: int = 0
    quiet: bool = False
    #: The command line as given (program name first), for provenance only: it never
    #: enters the parameters hash (bids_spheres.app.provenance.portable_command_line).
    command_line: tuple[str, ...] = ()
    #: The parser's path options and value-less short flags (set by the CLI from
    #: bids_spheres.app.cli.option_spellings), to make ``command_line`` portable.
    path_options: tuple[str, ...] = ()
    short_flags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """Build and cross-check a RunConfig from ``build_parser().parse_args()``."""
        bids_dir = Path(args.bids_dir).absolute()
        output_dir = Path(args.output_dir).absolute()
        # resolved (links followed) and before anything is created: a link to the input
        # given as output_dir must not get a .work folder inside the input
        inputs = [bids_dir] + ([Path(args.derivatives)] if args.derivatives else [])
        for given in inputs:
            resolved = output_dir.resolve()
            if resolved == given.resolve():
                link = "" if resolved == output_dir else f" (a link to {resolved})"
                raise UsageError(
                    f"output_dir {output_dir}{link} is the input dataset {given.absolute()} "
                    f"itself; write the derivatives elsewhere, e.g. "
                    f"{bids_dir}/derivatives/bids_spheres"
                )
        if (
            args.high_pass is not None
            and args.low_pass is not None
            and (args.high_pass >= args.low_pass)
        ):
            raise UsageError(
                f"--high-pass {args.high_pass} Hz must be lower than --low-pass {args.low_pass} Hz"
            )
        space, cohort, res = parse_space(args.space)
        res_native = res == "native"  # fMRIPrep's res-native (e.g. T1w:res-native): the
        if res_native:  # BOLD's own grid, whose files carry no res entity
            res = None
        filters = None
        if args.bids_filter_file is not None:
            filters = load_filter_file(args.bids_filter_file)
        mask = args.mask
        if mask not in ("fmriprep", "template", "none"):
            path = Path(mask)
            if not path.is_file():
                raise UsageError(
                    f"--mask {mask!r} is neither fmriprep, template, none nor an existing "
                    "mask file"
                )
            mask = str(path.absolute())
        work_dir = Path(args.work_dir).absolute() if args.work_dir else output_dir / ".work"
        standardize = None if args.standardize == "none" else args.standardize

        def _tuple(value: Any) -> tuple[str, ...] | None:
            return tuple(dict.fromkeys(value)) if value else None

        return cls(
            bids_dir=bids_dir,
            output_dir=output_dir,
            analysis_level=args.analysis_level,
            work_dir=work_dir,
            participant_label=_tuple(args.participant_label),
            session_label=_tuple(args.session_label),
            task=_tuple(args.task),
            run=_tuple(args.run),
            space=space,
            res=res,
            cohort=cohort,
            res_native=res_native,
            bids_filters=filters,
            derivatives=Path(args.derivatives).absolute() if args.derivatives else None,
            seeds=args.seeds,
            radius=_check_radius(args.radius),
            allow_overlap=args.allow_overlap,
            mask=mask,
            min_coverage=args.min_coverage,
            denoise_strategy=args.denoise_strategy,
            fd_threshold=args.fd_threshold,
            dvars_threshold=args.dvars_threshold,
            dummy_scans=args.dummy_scans,
            smoothing_fwhm=args.smoothing_fwhm,
            standardize=standardize,
            detrend=args.detrend,
            high_pass=args.high_pass,
            low_pass=args.low_pass,
            maps=bool(getattr(args, "maps", False) or getattr(args, "map_seeds", None)),
            map_seeds=_tuple(getattr(args, "map_seeds", None)),
            max_mean_fd=args.max_mean_fd,
            min_volumes=args.min_volumes,
            nprocs=args.nprocs if args.nprocs is not None else available_cpus(),
            dask_scheduler=(
                parse_dask_address(args.dask_scheduler)
                if getattr(args, "dask_scheduler", None) is not None
                else None
            ),
            bids_database_dir=(
                Path(args.bids_database_dir).absolute() if args.bids_database_dir else None
            ),
            overwrite=args.overwrite,
            reports=getattr(args, "reports", True),
            skip_bids_validator=args.skip_bids_validator,
            verbose=args.verbose,
            quiet=args.quiet,
        )

    @property
    def space_with_res(self) -> str:
        """``space[:cohort-C][:res-N]`` as fMRIPrep spells it."""
        cohort = f":cohort-{self.cohort}" if self.cohort else ""
        res = self.res or ("native" if self.res_native else None)
        return f"{self.space}{cohort}:res-{res}" if res else f"{self.space}{cohort}"

    def cleaning_parameters(self, seed_names: Sequence[str] | None = None) -> dict[str, Any]:
        """The settings that determine the numbers of a run's outputs.

        ``maps`` (the seeds mapped, or ``"all"``) only with ``--maps``: runs written
        without maps keep their hash. The ``--map-seeds`` are sorted and
        deduplicated, and are ``"all"`` when they are every one of ``seed_names``
        (the seed set's names): the same maps, the same parameters hash.
        """
        params = {
            "radius_default_mm": self.radius,
            "allow_overlap": self.allow_overlap,
            "mask": self.mask,
            "min_coverage": self.min_coverage,
            "denoise_strategy": self.denoise_strategy,
            "fd_threshold": self.fd_threshold,
            "dvars_threshold": self.dvars_threshold,
            "dummy_scans": self.dummy_scans,
            "smoothing_fwhm": self.smoothing_fwhm,
            "standardize": self.standardize,
            "detrend": self.detrend,
            "high_pass": self.high_pass,
            "low_pass": self.low_pass,
        }
        if self.maps:
            chosen = sorted(set(self.map_seeds or ()))
            everything = seed_names is not None and set(chosen) == set(seed_names)
            params["maps"] = chosen if chosen and not everything else "all"
        return params

    def to_json(self) -> dict[str, Any]:
        """All settings as JSON-serialisable values."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, at most ``SLURM_CPUS_PER_TASK``.

    ``os.sched_getaffinity`` (Linux; ``os.cpu_count()`` elsewhere) counts the CPUs
    the scheduler lets this process run on -- a container's ``--cpuset-cpus``, a
    ``taskset``, a SLURM job's cgroup with task affinity. ``SLURM_CPUS_PER_TASK``,
    when set to a positive number, caps it (SLURM may leave the affinity wider than
    the allocation). Always at least 1.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(n, 1)


def _check_radius(value: float) -> float:
    """``--radius`` in [0, MAX_RADIUS_MM] mm (a larger sphere holds more than a brain)."""
    if not 0 <= value <= MAX_RADIUS_MM:
        raise UsageError(
            f"--radius {value:g} mm is out of range; give a radius from 0 to "
            f"{MAX_RADIUS_MM:g} mm (a {MAX_RADIUS_MM:g} mm sphere already holds a whole brain)"
        )
    return value
