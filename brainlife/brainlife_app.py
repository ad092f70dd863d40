"""brainlife.io adapter: ``config.json`` -> ``bids_spheres`` command line.

What it promises
----------------
:func:`build_argv` turns brainlife's ``config.json`` (a flat JSON object) into the
argument list of ``bids_spheres.app.cli.main`` -- nothing else; :func:`main` reads the file,
stages brainlife datatypes as a small fMRIPrep dataset when they are given
(:func:`stage_datatypes`), runs the app and writes ``product.json`` (brainlife's task
summary, with the output's ``meta`` and ``tags``). Paths in the config are taken relative
to the directory of ``config.json``.

Inputs: two ways
----------------
* A whole fMRIPrep output directory (``fmriprep``; or a raw dataset ``bids`` holding it).
* brainlife's datatypes, as brainlife's fMRIPrep app hands them over: ``bold`` (the
  preprocessed BOLD image, ``bold.nii.gz`` of ``neuro/func/task``), ``bold_mask`` (its brain
  mask, ``mask.nii.gz`` of ``neuro/mask``; optional) and ``regressors`` (fMRIPrep's confounds,
  ``regressors.tsv`` of ``neuro/func/regressors``, with ``regressors_json`` next to it when
  there is one, for CompCor); each a path or a list of paths (one per run, in the same
  order). The subject, session, task and run of each BOLD come from its ``_inputs`` entry
  (``id`` ``bold``; ``meta.subject`` is required, ``meta.session``, ``meta.task`` or
  ``meta.TaskName`` and ``meta.run`` are used when present), its space from ``space`` in the
  config, else ``meta.space`` or a ``space-<label>`` tag, else ``MNI152NLin2009cAsym``; the
  repetition time from ``meta.RepetitionTime`` (brainlife's fMRIPrep app merges the BOLD
  sidecar into the meta), else the NIfTI header. They are linked (symlinks, nothing copied)
  into ``<work_dir>/brainlife_fmriprep`` under fMRIPrep's names, which becomes the
  ``bids_dir``.

Output datatype
---------------
``output/`` is the BIDS-Derivatives dataset bids_spheres writes (``dataset_description.json``,
``atlas-<A>_seeds.tsv``, ``sub-<S>/[ses-<X>/]func/*_timeseries.tsv`` and ``*_relmat.tsv`` with
JSON sidecars, ``group/`` at the group level). Register it on brainlife as the output
``output`` of datatype ``neuro/func/sphere-timeseries`` (files: ``dataset_description.json``
required, the rest as listed). ``product.json`` gives it ``meta`` (``subject``, ``session``,
``space``, ``atlas``, ``desc``: the labels found in the written file names) and ``tags``
(``space-<S>``, ``atlas-<A>``, ``desc-<D>``), and lists every timeseries with its number
of volumes, seeds and ``n/a`` seeds under ``bids_spheres.runs``.

config.json keys
----------------
================================  ===================================================
``fmriprep``                      fMRIPrep output directory (brainlife input); the
                                  ``bids_dir`` unless ``bids`` is given too
``bids``                          a BIDS dataset; with ``fmriprep`` it is the raw
                                  dataset and ``fmriprep`` goes to ``--derivatives``
``bold``, ``bold_mask``,          brainlife datatypes instead (see above); one of
``regressors``,                   ``fmriprep``, ``bids`` or ``bold`` is required
``regressors_json``
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
import csv
import json
import re
import shlex
import shutil
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
DATATYPE_KEYS = ("bold", "bold_mask", "regressors", "regressors_json")
OTHER_KEYS = ("fmriprep", "bids", "analysis_level", "detrend", "output_dir", "work_dir")
KNOWN_KEYS = frozenset(
    (*LIST_KEYS, *VALUE_KEYS, *FLAG_KEYS, *OTHER_KEYS, *DATATYPE_KEYS, "extra_args")
)
LEVELS = ("participant", "group", "both")
DEFAULT_SPACE = "MNI152NLin2009cAsym"
STAGED = "brainlife_fmriprep"  # the staged dataset, under work_dir
OUTPUT_DATATYPE = "neuro/func/sphere-timeseries"


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

    fmriprep, bids, bold = cfg.get("fmriprep"), cfg.get("bids"), cfg.get("bold")
    if fmriprep is None and bids is None and bold is None:
        raise ConfigError(
            "config.json needs an input: 'fmriprep' (or 'bids'), or brainlife datatypes "
            "('bold' with 'regressors')"
        )
    if bold is not None and (fmriprep is not None or bids is not None):
        raise ConfigError(
            "give either 'bold' (brainlife datatypes) or 'fmriprep'/'bids', not both"
        )
    work_dir = _path(cfg.get("work_dir", "work"), base, "work_dir")
    if bold is not None:
        bids_dir = str(Path(work_dir) / STAGED)
    else:
        bids_dir = _path(bids if bids is not None else fmriprep, base, "bids")
    argv = [
        bids_dir,
        _path(cfg.get("output_dir", "output"), base, "output_dir"),
        level,
    ]
    if bids is not None and fmriprep is not None:
        argv += ["--derivatives", _path(fmriprep, base, "fmriprep")]
    if bold is not None and "space" not in cfg:
        argv += ["--space", _datatype_runs(config)[0]["space"]]
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
    argv += ["--work-dir", work_dir]
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


def stage_datatypes(config: dict[str, Any], base_dir: Path | str = ".") -> Path | None:
    """Link brainlife's datatypes into a small fMRIPrep dataset; return its root.

    ``None`` when the config names no ``bold`` (a whole fMRIPrep directory is used). The
    dataset is ``<work_dir>/brainlife_fmriprep`` (rebuilt each time): for each BOLD, its
    image, mask, confounds TSV (and JSON) linked under fMRIPrep's names, a BOLD sidecar with
    ``RepetitionTime`` when the meta has one, and a ``dataset_description.json``.
    """
    base = Path(base_dir)
    if not _is_set(config.get("bold")):
        return None
    runs = _datatype_runs(config)
    root = Path(_path(config.get("work_dir") or "work", base, "work_dir")) / STAGED
    if root.is_symlink() or root.is_file():
        raise ConfigError(f"{root} is not a directory; remove it")
    if root.exists():
        shutil.rmtree(root)
    paths = {k: _path_list(config.get(k), base, k) for k in DATATYPE_KEYS}
    if not paths["regressors"]:
        raise ConfigError("'bold' needs 'regressors' (fMRIPrep's confounds, regressors.tsv)")
    for key in ("bold_mask", "regressors", "regressors_json"):
        if paths[key] and len(paths[key]) != len(paths["bold"]):
            raise ConfigError(
                f"{key} lists {len(paths[key])} file(s) for {len(paths['bold'])} 'bold' "
                "file(s); give one per BOLD, in the same order"
            )
    for key, files in paths.items():
        for path in files:
            if not path.is_file():
                raise ConfigError(f"{key}: {path} is not a file")
    names: set[str] = set()
    for i, run in enumerate(runs):
        prefix = f"sub-{run['subject']}" + (f"_ses-{run['session']}" if run["session"] else "")
        stem = f"{prefix}_task-{run['task']}" + (f"_run-{run['run']}" if run["run"] else "")
        if stem in names:
            raise ConfigError(
                f"two 'bold' inputs are both {stem}; their _inputs meta must differ "
                "(subject, session, task or run)"
            )
        names.add(stem)
        func = root / f"sub-{run['subject']}"
        if run["session"]:
            func = func / f"ses-{run['session']}"
        func = func / "func"
        func.mkdir(parents=True, exist_ok=True)
        bold_name = f"{stem}_space-{run['space']}_desc-preproc_bold"
        (func / f"{bold_name}.nii.gz").symlink_to(paths["bold"][i])
        if run["t_r"] is not None:
            sidecar = {"RepetitionTime": run["t_r"], "TaskName": run["task"]}
            (func / f"{bold_name}.json").write_text(json.dumps(sidecar), encoding="utf-8")
        if paths["bold_mask"]:
            mask_name = f"{stem}_space-{run['space']}_desc-brain_mask.nii.gz"
            (func / mask_name).symlink_to(paths["bold_mask"][i])
        confounds = f"{stem}_desc-confounds_timeseries"
        (func / f"{confounds}.tsv").symlink_to(paths["regressors"][i])
        if paths["regressors_json"]:
            (func / f"{confounds}.json").symlink_to(paths["regressors_json"][i])
    description = {
        "Name": "brainlife datatypes staged by bids_spheres' brainlife adapter",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Description": "brainlife neuro/func/task"}],
    }
    (root / "dataset_description.json").write_text(
        json.dumps(description, indent=2) + "\n", encoding="utf-8"
    )
    return root


def product(output: Path, status: str, message: str) -> dict[str, Any]:
    """brainlife's ``product.json`` for the dataset written in ``output``."""
    series = sorted(output.glob("sub-*/**/*_timeseries.tsv"))
    runs = [_summary(tsv, output) for tsv in series]
    found: dict[str, set[str]] = {k: set() for k in ("sub", "ses", "space", "atlas", "desc")}
    for tsv in series:
        for key, value in re.findall(r"(?:^|_)([a-z]+)-([A-Za-z0-9]+)", tsv.name):
            if key in found:
                found[key].add(value)
    meta: dict[str, Any] = {}
    for key, name in (("sub", "subject"), ("ses", "session")):
        if len(found[key]) == 1:
            meta[name] = next(iter(found[key]))
    for key in ("space", "atlas", "desc"):
        if found[key]:
            meta[key] = sorted(found[key])
    tags = [f"{key}-{value}" for key in ("space", "atlas", "desc") for value in sorted(found[key])]
    return {
        "brainlife": [{"type": status, "msg": message}],
        "output": {
            "datatype": OUTPUT_DATATYPE,
            "meta": meta,
            "tags": tags,
            "datatype_tags": ["bids-derivatives"],
        },
        "bids_spheres": {"timeseries": [r["file"] for r in runs], "runs": runs},
    }


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
        stage_datatypes(config, base)
    except (OSError, json.JSONDecodeError, ConfigError) as exc:
        message = f"brainlife_app: error: {args.config}: {exc}"
        print(message, file=sys.stderr)
        _write_product(args.product, {"brainlife": [{"type": "error", "msg": message}]})
        return USAGE_EXIT

    from bids_spheres.app.cli import main as bids_spheres_main

    code = 0
    for command in commands:
        print("bids_spheres " + shlex.join(command), flush=True)
        code = bids_spheres_main(command)
        if code not in (0, 1):  # 1: some runs failed, the others are written
            break
    output = Path(commands[0][1])
    written = len(list(output.glob("sub-*/**/*_timeseries.tsv")))
    if code == 0:
        status, message = "success", f"bids_spheres wrote {written} timeseries file(s)"
    elif code == 1:
        status, message = "warning", f"some runs failed; {written} timeseries file(s) written"
    else:
        status, message = "error", f"bids_spheres exited with code {code} (see the task log)"
    _write_product(args.product, product(output, status, message))
    return code


def _write_product(path: Path, content: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
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


def _path_list(value: Any, base: Path, key: str) -> list[Path]:
    if not _is_set(value):
        return []
    items = value if isinstance(value, list) else [value]
    return [Path(_path(item, base, key)) for item in items]


def _bids_label(value: Any, what: str) -> str:
    label = re.sub(r"[^A-Za-z0-9]", "", _text(value, what))
    if not label:
        raise ConfigError(f"{what} {value!r} has no letter or digit to make a BIDS label of")
    return label


def _datatype_runs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Subject, session, task, run, space and repetition time of each ``bold`` input."""
    n_bold = len(config["bold"]) if isinstance(config["bold"], list) else 1
    inputs = [i for i in config.get("_inputs") or [] if isinstance(i, dict)]
    entries = [i for i in inputs if i.get("id") == "bold"] or [
        i for i in inputs if "func" in str(i.get("datatype", ""))
    ]
    if len(entries) != n_bold:
        raise ConfigError(
            f"config.json _inputs has {len(entries)} entry(ies) with id 'bold' for {n_bold} "
            "'bold' file(s); brainlife writes one per BOLD input"
        )
    space = config.get("space")
    runs = []
    for entry in entries:
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        if not _is_set(meta.get("subject")):
            raise ConfigError(
                "the 'bold' input has no subject: brainlife's _inputs[].meta.subject is missing"
            )
        tags = [str(t) for t in entry.get("tags") or []]
        run_space = space if _is_set(space) else meta.get("space")
        if not _is_set(run_space):
            run_space = next((t[6:] for t in tags if t.startswith("space-")), DEFAULT_SPACE)
        task = meta.get("task") if _is_set(meta.get("task")) else meta.get("TaskName")
        t_r = meta.get("RepetitionTime")
        if _is_set(t_r) and (isinstance(t_r, bool) or not isinstance(t_r, (int, float))):
            raise ConfigError(f"_inputs meta RepetitionTime {t_r!r} is not a number")
        runs.append(
            {
                "subject": _bids_label(meta["subject"], "subject"),
                "session": _bids_label(meta["session"], "session")
                if _is_set(meta.get("session"))
                else "",
                "task": _bids_label(task, "task") if _is_set(task) else "unknown",
                "run": _bids_label(meta["run"], "run") if _is_set(meta.get("run")) else "",
                "space": _text(run_space, "space").split(":")[0],
                "t_r": float(t_r) if _is_set(t_r) else None,
            }
        )
    return runs


def _summary(tsv: Path, output: Path) -> dict[str, Any]:
    """Volumes, seeds and n/a seeds of one timeseries TSV."""
    with tsv.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.reader(stream, delimiter="\t"))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    missing = [name for j, name in enumerate(header) if body and all(r[j] == "n/a" for r in body)]
    return {
        "file": str(tsv.relative_to(output)),
        "volumes": len(body),
        "seeds": len(header),
        "missing_seeds": missing,
    }


if __name__ == "__main__":
    raise SystemExit(main())
