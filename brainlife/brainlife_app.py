"""brainlife.io adapter: ``config.json`` -> ``bids_spheres`` command line.

What it promises
----------------
:func:`build_argv` turns brainlife's ``config.json`` (a flat JSON object) into the
argument list of ``bids_spheres.app.cli.main`` -- nothing else; :func:`main` reads the file,
runs the app and writes ``product.json`` (brainlife's task summary). Paths in the config
are taken relative to the directory of ``config.json``.

config.json keys
----------------
================================  ===================================================
``fmriprep``                      fMRIPrep output directory (brainlife input); the
                                  ``bids_dir`` unless ``bids`` is given too
``bids``                          a BIDS dataset; with ``fmriprep`` it is the raw
                                  dataset and ``fmriprep`` goes to ``--derivatives``
                                  (one of the two is required)
``analysis_level``                ``participant`` (default), ``group`` or ``both``
                                  (participant, then group on the same output)
``participant_label``,            a list, or a string of labels separated by spaces or
``session_label``, ``task``,      commas (``"01 02"``, ``"sub-01,sub-02"``)
``run``
``space``, ``seeds``, ``mask``,   strings passed as they are (``seeds`` and ``mask`` may
``denoise_strategy``,             be built-in names or paths; a relative path that
``standardize``,                  exists next to config.json is made absolute)
``bids_filter_file``
``radius``, ``min_coverage``,     numbers (JSON numbers or numeric strings)
``fd_threshold``,
``dvars_threshold``,
``dummy_scans``,
``smoothing_fwhm``, ``high_pass``,
``low_pass``, ``max_mean_fd``,
``min_volumes``, ``nprocs``
``detrend``                       true -> ``--detrend``, false -> ``--no-detrend``
``allow_overlap``, ``overwrite``  true -> the flag
``output_dir``                    default ``output`` (brainlife uploads it)
``work_dir``                      default ``work`` (kept out of the uploaded output)
``extra_args``                    further command-line options, split like a shell
================================  ===================================================

``null``, ``""`` and ``[]`` mean "not set" (brainlife's form sends them for empty fields);
keys starting with ``_`` (brainlife's own ``_inputs``, ``_app``, ...) are ignored; any other
key is an error (exit 64), so that a misspelt key in the app registration is seen at once.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

USAGE_EXIT = 64

LIST_KEYS = ("participant_label", "session_label", "task", "run")
VALUE_KEYS = (
    "space",
    "bids_filter_file",
    "seeds",
    "radius",
    "mask",
    "min_coverage",
    "denoise_strategy",
    "fd_threshold",
    "dvars_threshold",
    "dummy_scans",
    "smoothing_fwhm",
    "standardize",
    "high_pass",
    "low_pass",
    "max_mean_fd",
    "min_volumes",
    "nprocs",
)
FLAG_KEYS = ("allow_overlap", "overwrite")
PATH_KEYS = ("bids_filter_file", "seeds", "mask")
OTHER_KEYS = ("fmriprep", "bids", "analysis_level", "detrend", "output_dir", "work_dir")
KNOWN_KEYS = frozenset((*LIST_KEYS, *VALUE_KEYS, *FLAG_KEYS, *OTHER_KEYS, "extra_args"))
LEVELS = ("participant", "group", "both")


class ConfigError(ValueError):
    """config.json cannot be turned into a command line."""


def build_argv(
    config: dict[str, Any], base_dir: Path | str = ".", level: str | None = None
) -> list[str]:
    """The ``bids_spheres`` arguments for ``config`` (one analysis level).

    ``level`` overrides ``config["analysis_level"]``; ``"both"`` is not a level here
    (:func:`main` runs ``participant`` then ``group``).
    """
    base = Path(base_dir)
    if not isinstance(config, dict):
        raise ConfigError("config.json must hold a JSON object")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown config.json key(s) {', '.join(unknown)}; known keys: "
            f"{', '.join(sorted(KNOWN_KEYS))}"
        )
    cfg = {k: v for k, v in config.items() if not k.startswith("_") and _is_set(v)}

    level = level or _text(cfg.get("analysis_level", "participant"), "analysis_level")
    if level not in ("participant", "group"):
        raise ConfigError(f"analysis_level {level!r} is not one of {', '.join(LEVELS)}")

    fmriprep, bids = cfg.get("fmriprep"), cfg.get("bids")
    if fmriprep is None and bids is None:
        raise ConfigError("config.json needs an input: 'fmriprep' (or 'bids')")
    bids_dir = _path(bids if bids is not None else fmriprep, base, "bids")
    argv = [
        bids_dir,
        _path(cfg.get("output_dir", "output"), base, "output_dir"),
        level,
    ]
    if bids is not None and fmriprep is not None:
        argv += ["--derivatives", _path(fmriprep, base, "fmriprep")]
    for key in LIST_KEYS:
        if key in cfg:
            argv += [_flag(key), *_labels(cfg[key], key)]
    for key in VALUE_KEYS:
        if key in cfg:
            value = _text(cfg[key], key)
            if key in PATH_KEYS and (base / value).exists():
                value = str((base / value).resolve())
            argv += [_flag(key), value]
    if "detrend" in cfg:
        argv.append("--detrend" if _bool(cfg["detrend"], "detrend") else "--no-detrend")
    for key in FLAG_KEYS:
        if key in cfg and _bool(cfg[key], key):
            argv.append(_flag(key))
    argv += ["--work-dir", _path(cfg.get("work_dir", "work"), base, "work_dir")]
    if "extra_args" in cfg:
        argv += shlex.split(_text(cfg["extra_args"], "extra_args"))
    return argv


def levels(config: dict[str, Any]) -> list[str]:
    """The analysis levels to run, in order."""
    level = config.get("analysis_level")
    if not _is_set(level):
        return ["participant"]
    level = _text(level, "analysis_level")
    if level not in LEVELS:
        raise ConfigError(f"analysis_level {level!r} is not one of {', '.join(LEVELS)}")
    return ["participant", "group"] if level == "both" else [level]


def main(argv: Sequence[str] | None = None) -> int:
    """Read config.json, run bids_spheres, write product.json; return the exit code."""
    parser = argparse.ArgumentParser(prog="brainlife_app", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config.json", type=Path, help="brainlife config")
    parser.add_argument(
        "--product", default="product.json", type=Path, help="brainlife product.json to write"
    )
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config.read_text(encoding="utf-8"))
        base = args.config.resolve().parent
        commands = [build_argv(config, base, level) for level in levels(config)]
    except (OSError, json.JSONDecodeError, ConfigError) as exc:
        message = f"brainlife_app: error: {args.config}: {exc}"
        print(message, file=sys.stderr)
        _write_product(args.product, "error", message, [])
        return USAGE_EXIT

    from bids_spheres.app.cli import main as bids_spheres_main

    code = 0
    for command in commands:
        print("bids_spheres " + shlex.join(command), flush=True)
        code = bids_spheres_main(command)
        if code not in (0, 1):  # 1: some runs failed, the others are written
            break
    output = Path(commands[0][1])
    written = sorted(str(p.relative_to(output)) for p in output.glob("sub-*/**/*_timeseries.tsv"))
    if code == 0:
        status, message = "success", f"bids_spheres wrote {len(written)} timeseries file(s)"
    elif code == 1:
        status, message = "warning", f"some runs failed; {len(written)} timeseries file(s) written"
    else:
        status, message = "error", f"bids_spheres exited with code {code} (see the task log)"
    _write_product(args.product, status, message, written)
    return code


def _write_product(path: Path, status: str, message: str, written: list[str]) -> None:
    product = {
        "brainlife": [{"type": status, "msg": message}],
        "bids_spheres": {"timeseries": written},
    }
    try:
        path.write_text(json.dumps(product, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:  # the run's own exit code matters more
        print(f"brainlife_app: cannot write {path}: {exc}", file=sys.stderr)


def _is_set(value: Any) -> bool:
    return value is not None and value != "" and value != []


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _text(value: Any, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key} must be a string or a number, not {value!r}")
    return str(value)


def _labels(value: Any, key: str) -> list[str]:
    items = value if isinstance(value, list) else re.split(r"[\s,]+", _text(value, key).strip())
    labels = [_text(v, key).strip() for v in items]
    return [label for label in labels if label]


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (
        "true",
        "false",
        "1",
        "0",
        "yes",
        "no",
    ):
        return value.strip().lower() in ("true", "1", "yes")
    raise ConfigError(f"{key} must be true or false, not {value!r}")


def _path(value: Any, base: Path, key: str) -> str:
    return str((base / _text(value, key)).resolve())


if __name__ == "__main__":
    raise SystemExit(main())
