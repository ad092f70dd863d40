"""brainlife/: config.json -> bids_spheres argv, and ``main`` end to end on the demo.

Both kinds of input: a whole fMRIPrep directory, and brainlife's datatypes (bold.nii.gz,
mask.nii.gz, regressors.tsv in folders of their own, the subject from ``_inputs[].meta``),
staged by the adapter; the output dataset and ``product.json`` (meta, tags, per-run
numbers) are checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bids_spheres.app.cli import build_parser
from bids_spheres.app.demo import DEMO_SEEDS, DemoInfo

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "brainlife" / "main"

_spec = importlib.util.spec_from_file_location(
    "brainlife_app", ROOT / "brainlife" / "brainlife_app.py"
)
app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app)


def test_full_config_maps_to_argv(tmp_path: Path) -> None:
    (tmp_path / "seeds.tsv").write_text("name\tx\ty\tz\n", encoding="utf-8")
    config = {
        "_app": "5f0c...",
        "_inputs": [{"id": "fmriprep", "datatype": "neuro/fmriprep"}],
        "fmriprep": "fmriprep_dir",
        "participant_label": "sub-01, 02",
        "session_label": ["1"],
        "task": "rest",
        "run": "",
        "space": "MNI152NLin2009cAsym:res-2",
        "seeds": "seeds.tsv",
        "radius": 6,
        "mask": "fmriprep",
        "min_coverage": "0.25",
        "denoise_strategy": "scrubbing+gsr",
        "fd_threshold": 0.3,
        "dvars_threshold": None,
        "dummy_scans": 3,
        "smoothing_fwhm": "",
        "standardize": "psc",
        "detrend": False,
        "high_pass": 0.01,
        "low_pass": 0.1,
        "allow_overlap": "true",
        "overwrite": False,
        "nprocs": 2,
        "extra_args": "-v --min-volumes 40",
    }
    argv = app.build_argv(config, tmp_path)
    base = tmp_path.resolve()
    assert argv == [
        str(base / "fmriprep_dir"),
        str(base / "output"),
        "participant",
        "--participant-label", "sub-01", "02",
        "--session-label", "1",
        "--task", "rest",
        "--space", "MNI152NLin2009cAsym:res-2",
        "--seeds", str(base / "seeds.tsv"),
        "--radius", "6",
        "--mask", "fmriprep",
        "--min-coverage", "0.25",
        "--denoise-strategy", "scrubbing+gsr",
        "--fd-threshold", "0.3",
        "--dummy-scans", "3",
        "--standardize", "psc",
        "--high-pass", "0.01",
        "--low-pass", "0.1",
        "--nprocs", "2",
        "--no-detrend",
        "--allow-overlap",
        "--work-dir", str(base / "work"),
        "-v", "--min-volumes", "40",
    ]  # fmt: skip
    args = build_parser().parse_args(argv)  # the real parser accepts every piece
    assert args.participant_label == ["01", "02"]
    assert args.detrend is False and args.allow_overlap is True and args.overwrite is False
    assert args.min_volumes == 40 and args.verbose == 1


def test_every_config_key_is_a_parser_option() -> None:
    options = {o for a in build_parser()._actions for o in a.option_strings}
    for key in (*app.LIST_KEYS, *app.VALUE_KEYS, *app.FLAG_KEYS, "work_dir"):
        assert "--" + key.replace("_", "-") in options, key


def test_bids_and_fmriprep_give_derivatives_and_defaults(tmp_path: Path) -> None:
    argv = app.build_argv({"bids": "raw", "fmriprep": "raw/derivatives/fmriprep"}, tmp_path)
    base = tmp_path.resolve()
    assert argv == [
        str(base / "raw"), str(base / "output"), "participant",
        "--derivatives", str(base / "raw" / "derivatives" / "fmriprep"),
        "--work-dir", str(base / "work"),
    ]  # fmt: skip
    assert app.build_argv({"fmriprep": "/abs/fp", "seeds": "power2011"}, tmp_path)[:3] == [
        "/abs/fp",
        str(base / "output"),
        "participant",
    ]
    seeds = app.build_argv({"fmriprep": "x", "seeds": "power2011"}, tmp_path)
    assert seeds[seeds.index("--seeds") + 1] == "power2011"  # a name, not a path


def test_levels() -> None:
    assert app.levels({}) == ["participant"]
    assert app.levels({"analysis_level": ""}) == ["participant"]
    assert app.levels({"analysis_level": "group"}) == ["group"]
    assert app.levels({"analysis_level": "both"}) == ["participant", "group"]
    with pytest.raises(app.ConfigError, match="analysis_level 'session'"):
        app.levels({"analysis_level": "session"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"fmriprep": "x", "raduis": 5}, "unknown config.json key"),
        ({"participant_label": "01"}, "needs an input"),
        ({"fmriprep": "x", "detrend": "maybe"}, "detrend must be true or false"),
        ({"fmriprep": "x", "radius": True}, "radius must be a string or a number"),
        ({"fmriprep": "x", "analysis_level": "all"}, "analysis_level 'all'"),
    ],
)
def test_bad_configs_are_named(config: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(app.ConfigError, match=message):
        app.build_argv(config, tmp_path)


def test_bad_config_exits_64_with_an_error_product(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"fmriprep": "x", "radius_mm": 5}))
    product = tmp_path / "product.json"
    code = app.main(["--config", str(tmp_path / "config.json"), "--product", str(product)])
    assert code == 64
    assert "unknown config.json key(s) radius_mm" in capsys.readouterr().err
    assert json.loads(product.read_text())["brainlife"][0]["type"] == "error"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def test_main_runs_the_demo_without_container(
    demo_one_run: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    # the input staged in the task directory, as brainlife does: a copy of the shared demo
    demo = copy_demo(demo_one_run, tmp_path / "task" / "fmriprep")
    task = tmp_path / "task"
    (task / "config.json").write_text(
        json.dumps(
            {
                "_inputs": [{"id": "fmriprep", "datatype": "neuro/fmriprep"}],
                "fmriprep": "fmriprep",
                "seeds": "fmriprep/code/demo_seeds.tsv",
                "participant_label": "01 02",
                "analysis_level": "both",
                "min_volumes": 40,
                "radius": 6,
            }
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [str(MAIN)],
        cwd=task,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(BIDS_SPHERES_NO_CONTAINER="1", PYTHON=sys.executable),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("bids_spheres ")]
    assert [c.split()[3] for c in commands] == ["participant", "group"]
    assert f"--seeds {demo.seeds_tsv.resolve()}" in commands[0]

    out = task / "output"
    series = sorted(out.glob("sub-*/func/*_timeseries.tsv"))
    assert [p.name.split("_")[0] for p in series] == ["sub-01", "sub-02"]
    for tsv in series:
        header = tsv.read_text(encoding="utf-8").splitlines()[0].split("\t")
        assert header == [s.name for s in DEMO_SEEDS]
        sidecar = json.loads(tsv.with_suffix(".json").read_text(encoding="utf-8"))
        assert sidecar["CleaningParameters"]["radius_default_mm"] == 6
    assert (out / "group" / "report.html").is_file()
    assert not (out / ".work").exists(), "the work dir must stay out of the uploaded output"
    assert (task / "work").is_dir()
    product = json.loads((task / "product.json").read_text(encoding="utf-8"))
    assert product["brainlife"] == [
        {"type": "success", "msg": "bids_spheres wrote 2 timeseries file(s)"}
    ]
    assert len(product["bids_spheres"]["timeseries"]) == 2


def test_main_runs_the_app_in_the_versioned_image(tmp_path: Path) -> None:
    fake = tmp_path / "fake-apptainer"
    record = tmp_path / "args.txt"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n', encoding="utf-8")
    fake.chmod(0o755)
    result = subprocess.run(
        [str(MAIN), "--config", "c.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(BIDS_SPHERES_RUNTIME=str(fake)),
    )
    assert result.returncode == 0, result.stderr
    version = re.search(
        r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M
    ).group(1)
    assert record.read_text().splitlines() == [
        "exec",
        "-e",
        f"docker://bids_spheres/bids_spheres:{version}",
        "python",
        str(ROOT / "brainlife" / "brainlife_app.py"),
        "--config",
        "c.json",
    ]


# --------------------------------------------------------------------------- brainlife datatypes


def _brainlife_task(demo: DemoInfo, root: Path) -> tuple[Path, dict]:
    """A brainlife-shaped task: each input datatype in a folder of its own beside the task
    directory (bold.nii.gz, mask.nii.gz, regressors.tsv/json, as brainlife's fMRIPrep app
    writes them), config.json naming them and _inputs carrying each BOLD's meta."""
    config: dict = {"bold": [], "bold_mask": [], "regressors": [], "regressors_json": []}
    inputs = []
    for i, bold in enumerate(demo.bold_files):
        subject = bold.name.split("_")[0][4:]
        func = bold.parent
        stem = bold.name.split("_space-")[0]
        mask = func / f"{stem}_space-{demo.space}_desc-brain_mask.nii.gz"
        folders = {}
        for kind, source, name in (
            ("bold", bold, "bold.nii.gz"),
            ("bold_mask", mask, "mask.nii.gz"),
            ("regressors", func / f"{stem}_desc-confounds_timeseries.tsv", "regressors.tsv"),
            ("regressors_json", func / f"{stem}_desc-confounds_timeseries.json",
             "regressors.json"),
        ):  # fmt: skip
            folder = root / f"5f0c{i}{kind}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / name)
            folders[kind] = folder
            config[kind].append(f"../{folder.name}/{name}")
        inputs.append(
            {
                "id": "bold",
                "task_id": f"5f0c{i}",
                "datatype": "5c...",
                "datatype_tags": ["preprocessed"],
                "tags": [f"space-{demo.space}"],
                "meta": {"subject": subject, "task": demo.task, "run": "1",
                         "RepetitionTime": demo.t_r},
            }
        )  # fmt: skip
    config["_inputs"] = [*inputs, {"id": "regressors", "meta": {"subject": "01"}}]
    config["_app"] = "5f0c..."
    task = root / "task"
    task.mkdir()
    return task, config


def test_brainlife_datatypes_end_to_end(demo_one_run: DemoInfo, tmp_path: Path) -> None:
    demo = demo_one_run  # shared and read-only (tests/conftest.py)
    task, config = _brainlife_task(demo, tmp_path / "bl")
    shutil.copyfile(demo.seeds_tsv, task / demo.seeds_tsv.name)  # its name is the atlas label
    config.update(seeds=demo.seeds_tsv.name, analysis_level="both", min_volumes=40)
    (task / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = subprocess.run(
        [str(MAIN)],
        cwd=task,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(BIDS_SPHERES_NO_CONTAINER="1", PYTHON=sys.executable),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    staged = task / "work" / "brainlife_fmriprep"
    assert f"bids_spheres {staged} " in result.stdout
    assert f"--space {demo.space}" in result.stdout

    # the numbers are those of the same runs read from the whole fMRIPrep directory
    reference = tmp_path / "reference"
    code = build_main_reference(demo, reference)
    assert code == 0
    out = task / "output"
    series = sorted(out.glob("sub-*/func/*_timeseries.tsv"))
    assert [p.name for p in series] == [
        p.name for p in sorted(reference.glob("sub-*/func/*_timeseries.tsv"))
    ]
    assert len(series) == 2
    for tsv in series:
        ours = np.loadtxt(tsv, delimiter="\t", skiprows=1)
        expected = np.loadtxt(reference / tsv.relative_to(out), delimiter="\t", skiprows=1)
        assert ours.shape == (demo.n_volumes - demo.n_nonsteady, len(DEMO_SEEDS))
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
        sidecar = json.loads(tsv.with_suffix(".json").read_text(encoding="utf-8"))
        assert sidecar["SamplingFrequency"] == pytest.approx(1 / demo.t_r)
    assert (out / "group" / "report.html").is_file()

    product = json.loads((task / "product.json").read_text(encoding="utf-8"))
    assert product["brainlife"] == [
        {"type": "success", "msg": "bids_spheres wrote 2 timeseries file(s)"}
    ]
    output = product["output"]
    assert output["datatype"] == app.OUTPUT_DATATYPE
    assert output["tags"] == [f"space-{demo.space}", "atlas-demoseeds", "desc-simple"]
    assert output["meta"] == {"space": [demo.space], "atlas": ["demoseeds"], "desc": ["simple"]}
    runs = product["bids_spheres"]["runs"]
    assert [r["file"].split("/")[0] for r in runs] == ["sub-01", "sub-02"]
    for run in runs:
        assert run["volumes"] == demo.n_volumes - demo.n_nonsteady
        assert run["seeds"] == len(DEMO_SEEDS)
        assert run["missing_seeds"] == []


def build_main_reference(demo: DemoInfo, out: Path) -> int:
    from bids_spheres.app.cli import main as cli_main

    return cli_main(
        [str(demo.root), str(out), "participant", "--seeds", str(demo.seeds_tsv),
         "--work-dir", str(out.parent / "reference-work")]
    )  # fmt: skip


def test_one_subject_product_meta_names_the_subject(
    demo_one_run: DemoInfo, tmp_path: Path
) -> None:
    demo = demo_one_run
    task, config = _brainlife_task(demo, tmp_path / "bl")
    config = {k: (v[0] if k in app.DATATYPE_KEYS else v) for k, v in config.items()}
    config["_inputs"] = config["_inputs"][:1]
    config["_inputs"][0]["meta"]["subject"] = "sub_01"  # brainlife's subjects: any text
    config.update(seeds=str(demo.seeds_tsv), radius=6)
    argv = app.build_argv(config, task)
    assert argv[:3] == [str(task.resolve() / "work" / app.STAGED), str(task.resolve() / "output"),
                        "participant"]  # fmt: skip
    root = app.stage_datatypes(config, task)
    assert root == task.resolve() / "work" / app.STAGED
    func = root / "sub-sub01" / "func"
    names = sorted(p.name for p in func.iterdir())
    assert names == [
        "sub-sub01_task-rest_run-1_desc-confounds_timeseries.json",
        "sub-sub01_task-rest_run-1_desc-confounds_timeseries.tsv",
        f"sub-sub01_task-rest_run-1_space-{demo.space}_desc-brain_mask.nii.gz",
        f"sub-sub01_task-rest_run-1_space-{demo.space}_desc-preproc_bold.json",
        f"sub-sub01_task-rest_run-1_space-{demo.space}_desc-preproc_bold.nii.gz",
    ]
    assert json.loads((func / names[3]).read_text())["RepetitionTime"] == demo.t_r
    assert (func / names[4]).resolve() == (task / config["bold"]).resolve()
    from bids_spheres.app.cli import main as cli_main

    assert cli_main(argv) == 0
    product = app.product(task / "output", "success", "ok")
    assert product["output"]["meta"]["subject"] == "sub01"
    (run,) = product["bids_spheres"]["runs"]
    assert run["volumes"] == demo.n_volumes - demo.n_nonsteady


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"_inputs": [{"id": "bold", "meta": {}}]}, "no subject"),
        ({"regressors": None}, "'bold' needs 'regressors'"),
        ({"fmriprep": "fp"}, "not both"),
        ({"bold": ["a.nii.gz", "b.nii.gz"]}, "_inputs has 1 entry"),
        ({"_inputs": [{"id": "bold", "meta": {"subject": "01", "RepetitionTime": "2s"}}]},
         "RepetitionTime '2s' is not a number"),
        ({"regressors": ["../nowhere/regressors.tsv"]}, "regressors: .* is not a file"),
    ],
)  # fmt: skip
def test_bad_datatype_configs_are_named(
    demo_one_run: DemoInfo, tmp_path: Path, change: dict, message: str
) -> None:
    task, config = _brainlife_task(demo_one_run, tmp_path / "bl")
    config = {k: (v[:1] if k in app.DATATYPE_KEYS else v) for k, v in config.items()}
    config["_inputs"] = config["_inputs"][:1]
    config.update(change)
    with pytest.raises(app.ConfigError, match=message):
        app.build_argv(config, task)
        app.stage_datatypes(config, task)
