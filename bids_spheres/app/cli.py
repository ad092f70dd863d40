"""Command line: ``bids_spheres <bids_dir> <output_dir> participant|group [options]``.

Promise
-------
:func:`build_parser` builds the argparse parser (no parsing, no side
effects); :func:`main` parses, checks arguments across each other (through
:meth:`bids_spheres.app.config.RunConfig.from_args`), runs the requested level
and turns every error a user can cause into ONE line on stderr and a BIDS-App
exit code: 0 success, 1 some runs failed, 16 validation, 17 unknown analysis
level, 64 usage (argparse's 2 is never used; an option error is one line and a
one-line usage hint), 65 bad data, 66 missing input (also: the selection --
participant, session, task, run, space, filters -- matched nothing), 70
internal error (an unexpected exception: a
bug to report), 73 cannot create output (also: the disk filled up during the
job, which then stops), 129/143 stopped by SIGHUP/SIGTERM (130 Ctrl-C): the
workers are terminated and their temporary files removed. Tracebacks are
shown only with ``-vv``.

:func:`demo_main` is the ``bids_spheres-demo`` command: it builds the example
dataset of :mod:`bids_spheres.app.demo` (once) and runs :func:`main` on it,
participant then group level.

:func:`option_spellings` lists, from the parser itself, the option strings
whose value names a file or directory (their type is one of
:data:`PATH_TYPES`) and the short flags that take no value: what
:func:`bids_spheres.app.provenance.portable_command_line` needs to find every
path in a command line, however it is spelled. Abbreviated long options are
refused (``allow_abbrev=False``): ``--seed x.tsv`` is a usage error, not
``--seeds``, so every option on a command line is spelled as the parser names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from bids_spheres import __version__
from bids_spheres.app.provenance import OptionSpellings
from bids_spheres.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    BidsSpheresError,
    Terminated,
    one_line,
)

__all__ = [
    "EXIT_CODES",
    "PATH_TYPES",
    "USAGE_HINT",
    "OptionSpellings",
    "build_parser",
    "demo_main",
    "main",
    "option_spellings",
]

EXIT_CODES = {
    "ok": 0,
    "some runs failed": 1,
    "validation": 16,
    "unknown level": 17,
    "usage": 64,
    "bad data": 65,
    "missing input": 66,
    "internal error": INTERNAL_ERROR_EXIT_CODE,
    "cannot write": 73,
    "SIGHUP": 129,
    "SIGINT": 130,
    "SIGTERM": 143,
}
ANALYSIS_LEVELS = ("participant", "group")


#: The one-line hint printed after an option error (instead of argparse's usage block).
USAGE_HINT = (
    "usage: bids_spheres BIDS_DIR OUTPUT_DIR {participant,group} [options]; "
    "bids_spheres --help lists the options"
)


class _Parser(argparse.ArgumentParser):
    """argparse with the BIDS-App usage exit code (64) instead of 2, and one-line errors.

    An option error is the error on one line and :data:`USAGE_HINT` on the next, not
    argparse's usage block (20 lines for this parser).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Every action ``add_argument`` returned, the parser's and its groups' (through
        #: :class:`_Recorded`): argparse keeps no public list of them.
        self.added_actions: list[argparse.Action] = []
        super().__init__(*args, **kwargs)  # adds -h/--help through add_argument

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.added_actions.append(action)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(64, f"{self.prog}: error: {' '.join(message.split())}\n{USAGE_HINT}\n")


class _Recorded:
    """An argument group (or mutually exclusive group) of a :class:`_Parser` whose
    ``add_argument`` records the returned action in the parser's ``added_actions``."""

    def __init__(self, group: Any, parser: _Parser) -> None:
        self._group, self._parser = group, parser

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self._group.add_argument(*args, **kwargs)
        self._parser.added_actions.append(action)
        return action

    def add_mutually_exclusive_group(self, **kwargs: Any) -> _Recorded:
        return _Recorded(self._group.add_mutually_exclusive_group(**kwargs), self._parser)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative number")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a fraction between 0 and 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _label(prefix: str):
    def parse(text: str) -> str:
        value = text[len(prefix) :] if text.startswith(prefix) else text
        if not value or not value.isascii() or not value.isalnum():
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid BIDS label (letters and digits only, "
                f"optionally prefixed with {prefix!r})"
            )
        return value

    parse.__name__ = f"{prefix.rstrip('-')} label"
    return parse


def _run_number(text: str) -> str:
    value = text[len("run-") :] if text.startswith("run-") else text
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a run number (digits only, optionally prefixed with 'run-')"
        )
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text}")
    return path


def _path_or_name(text: str) -> str:
    """The value of an option taking a built-in name or a file path, unchanged.

    Its own type so that :func:`option_spellings` knows the value may be a path.
    """
    return text


#: The argument types whose value names a file or directory: an option of one of these
#: types is a path option (:func:`option_spellings`).
PATH_TYPES = (Path, _existing_file, _path_or_name)


@lru_cache(maxsize=1)
def option_spellings() -> OptionSpellings:
    """The path options and value-less short flags of :func:`build_parser`, from its actions.

    A new option whose ``type`` is in :data:`PATH_TYPES` is a path option without
    being listed anywhere else.
    """
    paths: set[str] = set()
    flags: set[str] = set()
    for action in build_parser().added_actions:
        if action.type in PATH_TYPES:
            paths.update(action.option_strings)
        elif action.nargs == 0:
            flags.update(o for o in action.option_strings if len(o) == 2 and o[1] != "-")
    return OptionSpellings(frozenset(paths), frozenset(flags))


def build_parser() -> _Parser:
    """The bids_spheres argument parser (BIDS-App conventions)."""
    parser = _Parser(
        prog="bids_spheres",
        description=(
            "Denoised sphere (seed) timeseries from fMRIPrep outputs, written as a "
            "BIDS-Derivatives dataset."
        ),
        allow_abbrev=False,
    )
    parser.add_argument(
        "bids_dir",
        type=Path,
        help="an fMRIPrep output dataset, or a raw BIDS dataset with derivatives/fmriprep "
        "(or with --derivatives)",
    )
    parser.add_argument("output_dir", type=Path, help="where the derivatives are written")
    parser.add_argument(
        "analysis_level", metavar="{participant,group}", help="processing stage to run"
    )
    parser.add_argument("--version", action="version", version=f"bids_spheres {__version__}")

    sel = _Recorded(parser.add_argument_group("selecting runs"), parser)
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        type=_label("sub-"),
        metavar="LABEL",
        help="participants to process (with or without 'sub-'); default: all",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        type=_label("ses-"),
        metavar="LABEL",
        help="sessions to process (with or without 'ses-')",
    )
    sel.add_argument("--task", nargs="+", type=_label("task-"), help="tasks to process")
    sel.add_argument("--run", nargs="+", type=_run_number, help="run numbers to process")
    sel.add_argument(
        "--space",
        default="MNI152NLin2009cAsym",
        help="template space of the BOLD runs, optionally with a resolution as fMRIPrep "
        "writes it, e.g. MNI152NLin2009cAsym:res-2 (:res-native: the files without res, on "
        "the BOLD's own grid); T1w (or T1w:res-native) maps template seeds into each "
        "subject's T1w through fMRIPrep's from-T1w_to-<template> transform (default: "
        "%(default)s)",
    )
    sel.add_argument(
        "--bids-filter-file",
        type=_existing_file,
        metavar="FILE",
        help='JSON of entity filters, e.g. {"bold": {"session": "01", "acquisition": '
        'null}}; null = entity absent, "*" = any value',
    )
    sel.add_argument(
        "--derivatives",
        type=Path,
        metavar="PATH",
        help="the fMRIPrep output directory when bids_dir is a raw dataset",
    )

    spheres = _Recorded(parser.add_argument_group("seeds and spheres"), parser)
    spheres.add_argument(
        "--seeds",
        default="power2011",
        type=_path_or_name,
        help="a seeds TSV (columns name x y z [radius network]) or a built-in set: "
        "power2011, dosenbach2010, seitzman2018 (default: %(default)s)",
    )
    spheres.add_argument(
        "--radius",
        type=_non_negative_float,
        default=5.0,
        help="sphere radius in mm for seeds whose TSV gives none (0 = the nearest voxel; "
        "default: %(default)s)",
    )
    spheres.add_argument(
        "--allow-overlap", action="store_true", help="allow spheres to share voxels"
    )
    spheres.add_argument(
        "--mask",
        default="fmriprep",
        type=_path_or_name,
        help="restrict spheres to: 'fmriprep' (each run's brain mask), 'template' "
        "(TemplateFlow brain mask of the space), 'none', or a mask NIfTI path (default: "
        "%(default)s)",
    )
    spheres.add_argument(
        "--min-coverage",
        type=_fraction,
        default=0.5,
        help="seeds whose sphere has a smaller fraction of voxels inside the mask are "
        "written as n/a (default: %(default)s)",
    )

    clean = _Recorded(parser.add_argument_group("denoising"), parser)
    clean.add_argument(
        "--denoise-strategy",
        default="simple",
        type=_path_or_name,
        help="confound preset (none, simple, simple+gsr, scrubbing, scrubbing+gsr, compcor, "
        "aroma, 24p, 36p) or a strategy JSON file (default: %(default)s)",
    )
    clean.add_argument(
        "--fd-threshold",
        type=_positive_float,
        help="scrub volumes with framewise displacement above this (mm); overrides the strategy "
        "(default: the strategy's)",
    )
    clean.add_argument(
        "--dvars-threshold",
        type=_positive_float,
        help="scrub volumes with standardized DVARS above this; overrides the strategy (default: "
        "the strategy's)",
    )
    clean.add_argument(
        "--dummy-scans",
        type=_non_negative_int,
        help="drop this many initial volumes (default: fMRIPrep's non-steady-state outliers)",
    )
    clean.add_argument(
        "--smoothing-fwhm",
        type=_positive_float,
        metavar="MM",
        help="Gaussian smoothing FWHM (default: no smoothing)",
    )
    clean.add_argument(
        "--standardize",
        default="zscore_sample",
        choices=["zscore", "zscore_sample", "psc", "none"],
        help="standardization of the output timeseries (default: %(default)s)",
    )
    detrend = clean.add_mutually_exclusive_group()
    detrend.add_argument(
        "--detrend",
        dest="detrend",
        action="store_true",
        default=True,
        help="remove linear trends (the default)",
    )
    detrend.add_argument(
        "--no-detrend", dest="detrend", action="store_false", help="keep linear trends"
    )
    clean.add_argument(
        "--high-pass", type=_positive_float, metavar="HZ", help="high-pass cut-off (default: none)"
    )
    clean.add_argument(
        "--low-pass", type=_positive_float, metavar="HZ", help="low-pass cut-off (default: none)"
    )

    maps = _Recorded(parser.add_argument_group("seed-to-voxel maps"), parser)
    maps.add_argument(
        "--maps",
        action="store_true",
        help="also write, per run and seed, NIfTI maps of the correlation (r and Fisher z) "
        "of the seed's cleaned signal with every brain-mask voxel cleaned identically; the "
        "group level then writes mean Fisher-z and one-sample t maps",
    )
    maps.add_argument(
        "--map-seeds",
        nargs="+",
        metavar="NAME",
        help="map only these seeds (names of the seed table); implies --maps",
    )

    group = _Recorded(parser.add_argument_group("group level"), parser)
    group.add_argument(
        "--max-mean-fd",
        type=_positive_float,
        default=0.5,
        help="runs with a larger mean FD (mm) are not usable in group summaries (default: "
        "%(default)s)",
    )
    group.add_argument(
        "--min-volumes",
        type=_positive_int,
        default=50,
        help="runs with fewer kept volumes are not usable in group summaries (default: "
        "%(default)s)",
    )

    other = _Recorded(parser.add_argument_group("execution"), parser)
    other.add_argument(
        "--nprocs",
        type=_positive_int,
        help="runs processed at once; default: the CPUs this process may use (its CPU "
        "affinity, at most SLURM_CPUS_PER_TASK when set)",
    )
    other.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run each BOLD run as a task on this existing Dask distributed scheduler "
        "(e.g. tcp://10.0.0.5:8786; needs bids_spheres[dask])",
    )
    other.add_argument(
        "--work-dir",
        "-w",
        type=Path,
        help="scratch directory (pybids index, caches); default: OUTPUT_DIR/.work",
    )
    other.add_argument(
        "--bids-database-dir",
        type=Path,
        metavar="PATH",
        help="pybids database to create or reuse (share one between jobs)",
    )
    other.add_argument(
        "--overwrite", action="store_true", help="recompute runs that are already finished"
    )
    other.add_argument(
        "--no-reports",
        dest="reports",
        action="store_false",
        help="write no per-participant HTML report (OUTPUT_DIR/sub-<label>.html)",
    )
    other.add_argument(
        "--skip-bids-validator",
        "--skip_bids_validator",
        dest="skip_bids_validator",
        action="store_true",
        help="do not check that bids_dir looks like a BIDS dataset",
    )
    verbosity = other.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="count", default=0, help="more messages (-vv: debug)"
    )
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run bids_spheres; return the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    log = logging.getLogger("bids_spheres")
    if args.analysis_level not in ANALYSIS_LEVELS:
        print(
            f"bids_spheres: error: unknown analysis level {args.analysis_level!r}; "
            f"choose one of: {', '.join(ANALYSIS_LEVELS)}",
            file=sys.stderr,
        )
        return 17
    config = None
    previous = _handle_termination()
    try:
        from bids_spheres.app import workflow
        from bids_spheres.app.config import RunConfig

        spellings = option_spellings()  # carried to the runs: provenance never imports us
        config = dataclasses.replace(
            RunConfig.from_args(args),
            command_line=("bids_spheres", *(sys.argv[1:] if argv is None else argv)),
            path_options=tuple(sorted(spellings.paths)),
            short_flags=tuple(sorted(spellings.flags)),
        )
        if config.analysis_level == "participant":
            return workflow.participant(config)
        return workflow.group(config)
    except BidsSpheresError as exc:
        if args.verbose >= 2:
            log.exception("details")
        print(f"bids_spheres: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except (Terminated, KeyboardInterrupt) as exc:
        code = exc.exit_code if isinstance(exc, Terminated) else 130
        why = one_line(exc) if isinstance(exc, Terminated) else "interrupted"
        _stop(config)
        print(f"bids_spheres: {why}; stopped", file=sys.stderr)
        return code
    except MemoryError:
        print(
            "bids_spheres: error: out of memory; lower --nprocs or give the job more memory",
            file=sys.stderr,
        )
        return INTERNAL_ERROR_EXIT_CODE
    except Exception as exc:  # an unexpected failure is still one line
        if args.verbose >= 2:
            log.exception("details")
        print(
            f"bids_spheres: internal error: {type(exc).__name__}: {one_line(exc)} "
            "(rerun with -vv for the traceback and report it)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR_EXIT_CODE
    finally:
        _restore_handlers(previous)


def demo_main(argv: Sequence[str] | None = None) -> int:
    """``bids_spheres-demo [OUT]``: build the example dataset, run both levels, summarize.

    Writes ``OUT/fmriprep`` (the example fMRIPrep dataset, built once and then
    reused) and ``OUT/bids_spheres`` (the derivatives), then prints the shape of
    the signals and where the planted seed pairs stand in the group connectome.
    Returns the exit code of the first level that failed, else 0.
    """
    import pandas as pd

    from bids_spheres.app import demo

    parser = argparse.ArgumentParser(
        prog="bids_spheres-demo",
        description="Build a small fMRIPrep-like example dataset with planted correlated seeds "
        "and run bids_spheres on it (participant, then group level).",
    )
    parser.add_argument(
        "out",
        nargs="?",
        default="bids_spheres_demo",
        type=Path,
        help="directory for the example dataset and the outputs",
    )
    parser.add_argument("--nprocs", type=int, default=2, help="runs processed at once")
    args = parser.parse_args(argv)

    out = args.out.absolute()
    dataset = out / "fmriprep"
    if not (dataset / "dataset_description.json").is_file():
        print(f"building the example fMRIPrep dataset in {dataset}", file=sys.stderr)
        demo.build_dataset(dataset)
    seeds_tsv = dataset / "code" / "demo_seeds.tsv"
    derivatives = out / "bids_spheres"
    common = [str(dataset), str(derivatives)]
    options = ["--seeds", str(seeds_tsv), "--nprocs", str(args.nprocs), "--min-volumes", "20"]
    for level in ("participant", "group"):
        code = main([*common, level, *options])
        if code != 0:
            return code

    runs = sorted(derivatives.glob("sub-*/func/*_timeseries.tsv"))
    tables = sorted((derivatives / "group").glob("*_meas-FisherZMean_*_relmat.tsv"))
    if not runs or not tables:
        print(f"bids_spheres-demo: no outputs found under {derivatives}", file=sys.stderr)
        return 1
    first = pd.read_csv(runs[0], sep="\t", na_values="n/a")
    matrix = pd.read_csv(tables[0], sep="\t", na_values="n/a")
    matrix.index = matrix.columns
    print(
        f"participant level: {len(runs)} runs; signals of shape {first.shape} "
        f"(volumes x seeds), e.g. {runs[0]}"
    )
    print(f"group connectome (mean Fisher z across participants): {tables[0]}")
    planted = {frozenset(pair) for pair in demo.PLANTED_PAIRS}
    for a, b in demo.PLANTED_PAIRS:
        print(f"  planted pair {a}-{b}: z = {matrix.loc[a, b]:.2f}")
    others = [
        abs(matrix.loc[a, b])
        for i, a in enumerate(matrix.columns)
        for b in matrix.columns[i + 1 :]
        if frozenset((a, b)) not in planted
    ]
    print(f"  every other pair: |z| <= {max(others):.2f}")
    print(f"report: {derivatives / 'group' / 'report.html'}")
    return 0


_TERMINATING = ("SIGTERM", "SIGHUP")


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _handle_termination() -> dict[int, object]:
    """SIGTERM/SIGHUP raise :class:`Terminated` in the main thread; returns the old handlers."""
    import signal
    import threading

    previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in _TERMINATING:
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, _raise_terminated)
    return previous


def _restore_handlers(previous: dict[int, object]) -> None:
    import signal

    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]


def _stop(config: object) -> None:
    """After a signal: terminate the workers, then remove the temporary files they left."""
    import signal

    execution = sys.modules.get("bids_spheres.app.execution")
    ignored = {s: signal.signal(s, signal.SIG_IGN) for s in _signals(_TERMINATING)}
    try:
        if execution is not None:
            execution.stop_workers()
        output_dir = getattr(config, "output_dir", None)
        if output_dir is not None and Path(output_dir).is_dir():
            from bids_spheres.app import outputs

            for directory in [Path(output_dir), *Path(output_dir).rglob("*")]:
                if directory.is_dir() and not directory.is_symlink():
                    outputs.remove_stale_temps(directory)
    finally:
        for signum, handler in ignored.items():
            signal.signal(signum, handler)


def _signals(names: Sequence[str]) -> list[int]:
    import signal

    return [getattr(signal, n) for n in names if hasattr(signal, n)]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.WARNING - 10 * min(verbose + 1, 2)
    root = logging.getLogger("bids_spheres")
    root.setLevel(level)
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.propagate = False


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
