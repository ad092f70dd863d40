"""The SLURM scripts (scripts/slurm/), without SLURM: stand-in sbatch, sacct and apptainer.

Participant selection (participants.tsv, a labels file, or the sub-* folders of an fMRIPrep
dataset without participants.tsv, with our own message when there is none); submit.sh
chains the group job with afterany and passes the bids_spheres options to both jobs as an
array (a path with spaces stays one argument); each array task records its exit code; the
group job checks the tasks' outcome itself (exit files, else sacct) and runs the group level
when at least one task succeeded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "scripts" / "slurm"
SCRIPT = SLURM / "bids_spheres_array.sbatch"
SEEDS_WITH_SPACE = "/my data/seeds v2.tsv"


def _select(labels: Path, index: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; select_label "$0" "$1"', str(labels), index],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def participants(tmp_path: Path) -> Path:
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t20\nsub-02\t31\n\nsub-A3\t44\n")
    return path


def test_selects_the_ith_participant(participants: Path) -> None:
    assert [_select(participants, str(i)).stdout.strip() for i in (1, 2, 3)] == ["01", "02", "A3"]


def test_plain_label_list(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("# cohort 1\n01\nsub-07\n")
    assert _select(labels, "2").stdout.strip() == "07"


@pytest.mark.parametrize(
    ("index", "code", "message"),
    [
        ("4", 65, "no participant number 4"),
        ("0", 64, "not a positive"),
        ("x", 64, "not a positive"),
    ],
)
def test_bad_index(participants: Path, index: str, code: int, message: str) -> None:
    done = _select(participants, index)
    assert done.returncode == code and message in done.stderr


def test_unsafe_label_is_refused(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("../../etc\n")
    done = _select(labels, "1")
    assert done.returncode == 65 and "not a BIDS label" in done.stderr


def test_count_and_array_task_environment(participants: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BIDS_DIR": str(tmp_path),
        "OUTPUT_DIR": str(tmp_path / "out"),
        "LABELS_FILE": str(participants),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "--count"], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "3"
    # a task without SIF says what is missing and runs nothing
    env["SLURM_ARRAY_TASK_ID"] = "2"
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "SIF" in done.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- stand-ins


def _tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body, encoding="utf-8")
    path.chmod(0o755)


def _recorded(path: Path) -> list[list[str]]:
    """The calls a stand-in recorded: one NUL-separated argument list per line file."""
    calls = sorted(path.parent.glob(path.name + ".*"), key=lambda p: int(p.suffix[1:]))
    return [p.read_bytes().decode().split("\0")[:-1] for p in calls]


RECORD = """n=$(ls "$RECORD".* 2>/dev/null | wc -l); n=$((n + 1))
printf '%s\\0' "$@" > "$RECORD.$n"
"""


@pytest.fixture
def fmriprep(tmp_path: Path) -> Path:
    """An fMRIPrep output dataset: sub-* folders and reports, no participants.tsv."""
    root = tmp_path / "fmriprep"
    for label in ("02", "01", "A3"):
        (root / f"sub-{label}" / "func").mkdir(parents=True)
        (root / f"sub-{label}.html").write_text("report", encoding="utf-8")
    (root / "logs").mkdir()
    (root / "dataset_description.json").write_text("{}", encoding="utf-8")
    return root


def _slurm_env(tmp_path: Path, bids_dir: Path, **extra: str) -> dict[str, str]:
    sif = tmp_path / "bids_spheres.sif"
    sif.write_text("image", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("LABELS_FILE", "BIDS_SPHERES_ARGS")}
    env.update(
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        BIDS_DIR=str(bids_dir),
        OUTPUT_DIR=str(tmp_path / "out"),
        SIF=str(sif),
        RECORD=str(tmp_path / "calls"),
    )
    env.update(extra)
    return env


def _bash(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60
    )


# --------------------------------------------------------------------------- participants


def test_participants_from_sub_folders_without_participants_tsv(
    fmriprep: Path, tmp_path: Path
) -> None:
    env = _slurm_env(tmp_path, fmriprep)
    assert _bash(SCRIPT, env, "--count").stdout.strip() == "3"
    labels = [
        subprocess.run(
            ["bash", "-c", f'source "{SCRIPT}"; select_label "" "$0"', str(i)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        for i in (1, 2, 3)
    ]  # fmt: skip
    assert labels == ["01", "02", "A3"]  # sorted folders; reports and logs/ are not labels


def test_submit_without_any_participant_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _tool(tmp_path / "bin", "sbatch", RECORD + "echo 1\n")
    done = _bash(SLURM / "submit.sh", _slurm_env(tmp_path, empty))
    assert done.returncode == 66
    assert done.stderr.strip() == (
        f"submit.sh: no participants found in the sub-* folders of {empty} (it has no "
        "participants.tsv); set LABELS_FILE to a file with one label per line"
    )
    assert _recorded(tmp_path / "calls") == []  # nothing submitted


def test_submit_without_the_image_names_the_recipe(fmriprep: Path, tmp_path: Path) -> None:
    env = _slurm_env(tmp_path, fmriprep, SIF=str(tmp_path / "missing.sif"))
    done = _bash(SLURM / "submit.sh", env)
    assert done.returncode == 66 and "apptainer.def" in done.stderr


# --------------------------------------------------------------------------- submission


def test_submit_chains_the_group_job_afterany_with_the_arguments_as_an_array(
    fmriprep: Path, tmp_path: Path
) -> None:
    _tool(tmp_path / "bin", "sbatch", RECORD + 'echo "$((4241 + n))"\n')
    options = ["--seeds", SEEDS_WITH_SPACE, "--denoise-strategy", "scrubbing"]
    done = _bash(SLURM / "submit.sh", _slurm_env(tmp_path, fmriprep), *options)
    assert done.returncode == 0, done.stderr
    array, group = _recorded(tmp_path / "calls")
    assert array == [
        "--parsable", "--export=ALL", "--array=1-3", str(SLURM / "bids_spheres_array.sbatch"),
        *options,
    ]  # fmt: skip
    assert group == [
        "--parsable", "--export=ALL,ARRAY_JOB_ID=4242,N_TASKS=3",
        "--dependency=afterany:4242", str(SLURM / "group.sbatch"), *options,
    ]  # fmt: skip
    assert "participant array job 4242 (3 tasks" in done.stdout


def test_the_old_space_split_variable_is_refused(fmriprep: Path, tmp_path: Path) -> None:
    _tool(tmp_path / "bin", "sbatch", RECORD + "echo 1\n")
    env = _slurm_env(tmp_path, fmriprep, BIDS_SPHERES_ARGS="--seeds power2011")
    done = _bash(SLURM / "submit.sh", env)
    assert done.returncode == 64 and "pass the bids_spheres options as" in done.stderr
    assert _recorded(tmp_path / "calls") == []


# --------------------------------------------------------------------------- array task


def test_array_task_runs_the_image_and_records_its_exit_code(
    fmriprep: Path, tmp_path: Path
) -> None:
    _tool(tmp_path / "bin", "apptainer", RECORD + "exit 1\n")  # 1: some runs failed
    env = _slurm_env(
        tmp_path, fmriprep, SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_JOB_ID="77",
        SLURM_CPUS_PER_TASK="4",
    )  # fmt: skip
    done = _bash(SCRIPT, env, "--seeds", SEEDS_WITH_SPACE)
    assert done.returncode == 1, done.stderr
    (call,) = _recorded(tmp_path / "calls")
    out, work = tmp_path / "out", tmp_path / "out" / ".work"
    assert call == [
        "run", "--cleanenv", "-B", f"{fmriprep}:/data:ro", "-B", f"{out}:/out",
        "-B", f"{work}:/work", env["SIF"], "/data", "/out", "participant",
        "--participant-label", "02", "--bids-database-dir", "/work/bids_db",
        "--work-dir", "/work/sub-02", "--nprocs", "4", "--seeds", SEEDS_WITH_SPACE,
    ]  # fmt: skip
    assert (work / "slurm" / "77" / "task-2.exit").read_text().strip() == "1"
    # the shared index folder exists before the app starts (the app creates none itself
    # before its selection passed): the first task builds the index, the others reuse it
    assert (work / "bids_db").is_dir()


def test_array_task_that_cannot_start_still_records_its_exit_code(
    fmriprep: Path, tmp_path: Path
) -> None:
    env = _slurm_env(tmp_path, fmriprep, SLURM_ARRAY_TASK_ID="9", SLURM_ARRAY_JOB_ID="77")
    done = _bash(SCRIPT, env)
    assert done.returncode == 65 and "no participant number 9" in done.stderr
    exit_file = tmp_path / "out" / ".work" / "slurm" / "77" / "task-9.exit"
    assert exit_file.read_text().strip() == "65"


# --------------------------------------------------------------------------- group job


def _exit_files(tmp_path: Path, codes: dict[int, str]) -> None:
    folder = tmp_path / "out" / ".work" / "slurm" / "77"
    folder.mkdir(parents=True)
    for task, code in codes.items():
        (folder / f"task-{task}.exit").write_text(code + "\n", encoding="utf-8")


def test_group_runs_after_a_failed_task_and_reports_it(fmriprep: Path, tmp_path: Path) -> None:
    # task 1 ok, task 2 some runs failed, task 3 killed (no exit file; sacct: TIMEOUT)
    _exit_files(tmp_path, {1: "0", 2: "1"})
    _tool(tmp_path / "bin", "apptainer", RECORD)
    _tool(
        tmp_path / "bin", "sacct",
        'case "$*" in *"-j 77_3"*) echo "TIMEOUT";; *) echo "COMPLETED";; esac\n',
    )  # fmt: skip
    env = _slurm_env(tmp_path, fmriprep, ARRAY_JOB_ID="77", N_TASKS="3")
    done = _bash(SLURM / "group.sbatch", env, "--min-volumes", "40", "--seeds", SEEDS_WITH_SPACE)
    assert done.returncode == 1  # the group level ran, the failed task stays visible
    assert "participant task 3 of job 77 failed (TIMEOUT)" in done.stderr
    assert "2 of 3 participant task(s) done, 1 failed" in done.stdout
    (call,) = _recorded(tmp_path / "calls")
    assert call[-6:] == ["/out", "group", "--min-volumes", "40", "--seeds", SEEDS_WITH_SPACE]


def test_group_with_every_task_done_exits_0(fmriprep: Path, tmp_path: Path) -> None:
    _exit_files(tmp_path, {1: "0", 2: "0"})
    _tool(tmp_path / "bin", "apptainer", RECORD)
    env = _slurm_env(tmp_path, fmriprep, ARRAY_JOB_ID="77", N_TASKS="2")
    done = _bash(SLURM / "group.sbatch", env)
    assert done.returncode == 0, done.stderr
    assert len(_recorded(tmp_path / "calls")) == 1


def test_group_is_not_run_when_no_task_succeeded(fmriprep: Path, tmp_path: Path) -> None:
    _exit_files(tmp_path, {1: "65", 2: "70"})
    _tool(tmp_path / "bin", "apptainer", RECORD)
    env = _slurm_env(tmp_path, fmriprep, ARRAY_JOB_ID="77", N_TASKS="2")
    done = _bash(SLURM / "group.sbatch", env)
    assert done.returncode == 1
    assert "no participant task succeeded; the group level is not run" in done.stderr
    assert "task 1 of job 77 failed (65)" in done.stderr
    assert _recorded(tmp_path / "calls") == []


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (Debian package shellcheck)"
    scripts = [
        *sorted(SLURM.iterdir()),
        SLURM.parents[0] / "build-image.sh",
        ROOT / "brainlife" / "main",
    ]
    done = subprocess.run(
        [shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
