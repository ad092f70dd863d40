"""Reruns never keep stale or mismatched results; writers never follow links (issue 13).

* what makes a run "finished": a content stamp of every input file that
  determines its numbers (:func:`bids_spheres.app.run.input_files`);
* a run's files form one unit: concurrent writers are serialized, the
  timeseries JSON records the SHA-256 of the files written with it, and
  :func:`bids_spheres.app.outputs.is_complete` checks them;
* seeds without a declared space on a native-space run: a warning, logged
  once and recorded in every run's sidecar;
* symbolic links inside output_dir are never followed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_spheres.app import confounds, outputs, run, seeds
from bids_spheres.app.cli import main
from bids_spheres.app.config import RunConfig
from bids_spheres.app.demo import DemoInfo
from bids_spheres.app.discovery import RunInputs
from bids_spheres.errors import OutputError


@pytest.fixture
def small(demo_small: DemoInfo, copy_demo, tmp_path: Path) -> DemoInfo:
    """A private copy of the smallest demo (1 subject, 1 run, 40 volumes)."""
    return copy_demo(demo_small, tmp_path / "ds")


def _func(root: Path, pattern: str) -> Path:
    return next((root / "sub-01" / "func").glob(pattern))


def _task(
    root: Path, out: Path, *, mask: str = "fmriprep", strategy: str = "simple"
) -> run.RunTask:
    bold = _func(root, "*space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    prefix = bold.name.split("_desc-")[0]
    aroma = bold.with_name(f"{prefix}_desc-smoothAROMAnonaggr_bold.nii.gz")
    inputs = RunInputs(
        bold=bold,
        mask=bold.with_name(f"{prefix}_desc-brain_mask.nii.gz"),
        confounds=_func(root, "*desc-confounds_timeseries.tsv"),
        confounds_json=_func(root, "*desc-confounds_timeseries.json"),
        t_r=2.0,
        entities={"subject": "01", "task": "rest", "run": "1", "space": "MNI152NLin2009cAsym"},
        sidecar=bold.with_name(f"{prefix}_desc-preproc_bold.json"),
        fmriprep_root=root,
        aroma_bold=aroma if aroma.exists() else None,
        t_r_source=bold.with_name(f"{prefix}_desc-preproc_bold.json"),
    )
    config = RunConfig(
        bids_dir=root, output_dir=out, analysis_level="participant", work_dir=out / ".work",
        mask=mask, denoise_strategy=strategy,
    )  # fmt: skip
    seed_set = seeds.load(root / "code" / "demo_seeds.tsv")
    return run.RunTask(config, inputs, seed_set, confounds.load_strategy(strategy), "fmriprep")


def _same_size_edit(path: Path) -> None:
    """Change one byte of ``path`` keeping its size and modification time."""
    st = path.stat()
    blob = bytearray(path.read_bytes())
    if path.name.endswith(".gz"):
        img = nib.load(path)
        data = np.asanyarray(img.dataobj).copy()
        data.flat[data.size // 2] += 1
        raw = nib.Nifti1Image(data, img.affine, img.header).to_bytes()
        blob = bytearray(gzip.compress(raw, mtime=0))
    else:
        index = next(i for i in range(len(blob) - 1, -1, -1) if chr(blob[i]).isdigit())
        blob[index] = ord("7") if blob[index] != ord("7") else ord("3")
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ------------------------------------------------------------- item 1: inputs


@pytest.mark.parametrize(
    ("role", "mask", "strategy"),
    [
        ("sidecar", "fmriprep", "simple"),
        ("confounds_json", "fmriprep", "simple"),
        ("confounds", "fmriprep", "simple"),
        ("mask", "fmriprep", "simple"),
        ("mask", "file", "simple"),
        ("mask", "template", "simple"),
        ("bold_read", "fmriprep", "aroma"),
        ("bold", "fmriprep", "simple"),
    ],
)
def test_every_input_file_is_in_the_parameters_hash(
    small: DemoInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role, mask, strategy
) -> None:
    root = small.root
    bold = _func(root, "*space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    fmriprep_mask = _func(root, "*space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz")
    if strategy == "aroma":
        prefix = bold.name.split("_desc-")[0]
        shutil.copy2(bold, bold.with_name(f"{prefix}_desc-smoothAROMAnonaggr_bold.nii.gz"))
    template = None
    if mask == "file":
        mask = str(shutil.copy2(fmriprep_mask, tmp_path / "mymask.nii.gz"))
    elif mask == "template":
        template = shutil.copy2(fmriprep_mask, tmp_path / "tpl-X_res-02_desc-brain_mask.nii.gz")
        monkeypatch.setattr(run, "_template_mask", lambda space, res, cohort=None: Path(template))
    task = _task(root, tmp_path / "out", mask=mask, strategy=strategy)
    files = {
        "bold": bold,
        "bold_read": task.run.aroma_bold,
        "sidecar": task.run.sidecar,
        "mask": {"fmriprep": fmriprep_mask, "template": template}.get(task.config.mask, mask),
        "confounds": task.run.confounds,
        "confounds_json": task.run.confounds_json,
    }
    before = run.plan(task).digest
    assert run.plan(task).digest == before  # nothing changed: same hash
    _same_size_edit(Path(files[role]))
    assert run.plan(task).digest != before, f"a new {role} left the hash unchanged"
    # the same list names the run's sources
    listed = run.input_files(task)
    assert listed == {key: Path(value) for key, value in files.items() if value is not None}


def test_hash_does_not_depend_on_where_the_dataset_is_mounted(
    small: DemoInfo, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "mounted" / "elsewhere"
    shutil.copytree(small.root, elsewhere)
    a = run.plan(_task(small.root, tmp_path / "out")).digest
    b = run.plan(_task(elsewhere, tmp_path / "out")).digest
    assert a == b


def test_big_gzip_images_are_stamped_by_their_trailer(
    small: DemoInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the hashing size, a .nii.gz is stamped by CRC-32 + length of its data."""
    monkeypatch.setattr(run, "_HASHED_BYTES", 0)
    bold = _func(small.root, "*space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    raw = gzip.decompress(bold.read_bytes())
    links = {"fmriprep": small.root}
    stamp = run._file_stamp(bold, links)
    assert stamp[0] == "bids:fmriprep:" + bold.relative_to(small.root).as_posix()
    assert stamp[2] == "gzip:" + bold.read_bytes()[-8:].hex()
    bold.write_bytes(gzip.compress(raw, compresslevel=1))  # same data, other bytes
    assert run._file_stamp(bold, links)[2] == stamp[2]
    _same_size_edit(bold)  # other data
    assert run._file_stamp(bold, links)[2] != stamp[2]


def _cli(root: Path, out: Path, *extra: str) -> int:
    return main(
        [
            str(root), str(out), "participant", "--seeds", str(root / "code" / "demo_seeds.tsv"),
            "--work-dir", str(out.parent / "work"), "--min-volumes", "10", *extra,
        ]
    )  # fmt: skip


def test_rerun_after_a_corrected_repetition_time_rewrites_the_run(
    small: DemoInfo, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _cli(small.root, out) == 0
    (written,) = out.glob("sub-01/func/*_timeseries.json")
    assert json.loads(written.read_text())["RepetitionTime"] == 2.0
    sidecar = _func(small.root, "*space-MNI152NLin2009cAsym_desc-preproc_bold.json")
    content = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**content, "RepetitionTime": 2.5}))
    assert _cli(small.root, out) == 0
    meta = json.loads(written.read_text())
    assert meta["RepetitionTime"] == 2.5
    assert meta["SamplingFrequency"] == pytest.approx(0.4)
    assert any(src.endswith(sidecar.name) for src in meta["Sources"])


# -------------------------------------------- item 2 / 18: one unit, verified


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((200, 6)).astype(np.float32)
    return table, np.corrcoef(table.T), outputs.params_hash({"job": seed})


def _writer(root: str, seed: int, start, rounds: int) -> None:
    paths = outputs.run_paths(root, {"subject": "01", "task": "rest"}, atlas="A", desc="d")
    table, relmat, digest = _pair(seed)
    names = [f"s{i}" for i in range(table.shape[1])]
    start.wait()
    for _ in range(rounds):
        outputs.write_run(
            paths, table, names, {"ParametersHash": digest}, relmat=relmat, relmat_sidecar={}
        )


def test_concurrent_writers_of_one_run_leave_one_pair(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    paths = outputs.run_paths(tmp_path, {"subject": "01", "task": "rest"}, atlas="A", desc="d")
    expected = {}
    for seed in (1, 2):
        table, _, digest = _pair(seed)
        names = [f"s{i}" for i in range(table.shape[1])]
        expected[digest] = outputs._render_matrix_tsv(paths.timeseries_tsv, names, table)
    mixed, unverified = [], []
    for trial in range(40):
        start = context.Barrier(2)
        jobs = [
            context.Process(target=_writer, args=(str(tmp_path), seed, start, 8))
            for seed in (1, 2)
        ]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(60)
            assert job.exitcode == 0
        meta = json.loads(paths.timeseries_json.read_text())
        tsv = paths.timeseries_tsv.read_bytes()
        if tsv.decode() != expected[meta["ParametersHash"]]:
            mixed.append(trial)  # the TSV of one job beside the JSON of the other
        record = meta.get("OutputChecksums", {})
        if record.get(paths.timeseries_tsv.name) != hashlib.sha256(tsv).hexdigest():
            unverified.append(trial)
        elif not outputs.is_complete(paths, meta["ParametersHash"]):
            unverified.append(trial)
    assert mixed == [], f"{len(mixed)} of 40 trials left a mixed pair"
    assert unverified == []


@pytest.mark.parametrize("damage", ["other_tsv", "corrupt_tsv", "no_relmat", "corrupt_relmat"])
def test_a_damaged_or_mismatched_run_is_not_complete(tmp_path: Path, damage: str) -> None:
    paths = outputs.run_paths(tmp_path, {"subject": "01", "task": "rest"}, atlas="A", desc="d")
    table, relmat, digest = _pair(1)
    names = [f"s{i}" for i in range(table.shape[1])]
    outputs.write_run(
        paths, table, names, {"ParametersHash": digest}, relmat=relmat, relmat_sidecar={}
    )
    assert outputs.is_complete(paths, digest)
    if damage == "other_tsv":
        other = _pair(2)[0]
        paths.timeseries_tsv.write_text(
            outputs._render_matrix_tsv(paths.timeseries_tsv, names, other)
        )
    elif damage == "corrupt_tsv":
        text = paths.timeseries_tsv.read_text()
        paths.timeseries_tsv.write_text(text[: len(text) // 2])
    elif damage == "no_relmat":
        paths.relmat_tsv.unlink()
    else:
        paths.relmat_tsv.write_text("s0\n1\n")
    assert not outputs.is_complete(paths, digest)


def test_a_deleted_relmat_is_written_again_on_rerun(small: DemoInfo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _cli(small.root, out) == 0
    (relmat,) = out.glob("sub-01/func/*_relmat.tsv")
    content = relmat.read_bytes()
    relmat.unlink()
    assert _cli(small.root, out) == 0
    assert relmat.read_bytes() == content


def test_seeds_without_space_on_a_native_run_warn_once_and_in_the_sidecar(
    small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds_tsv = tmp_path / "nospace_seeds.tsv"  # no JSON sidecar: space unknown
    shutil.copy(small.root / "code" / "demo_seeds.tsv", seeds_tsv)
    out = tmp_path / "out"
    code = _cli(small.root, out, "--seeds", str(seeds_tsv), "--space", "T1w",
                "--min-coverage", "0", "--allow-overlap")  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("declare no Space") == 1
    (written,) = out.glob("sub-01/func/*space-T1w*_timeseries.json")
    warnings = json.loads(written.read_text())["Warnings"]
    assert any("declare no Space" in w and "--space MNI152NLin2009cAsym" in w for w in warnings)


# ---------------------------------------------------------- item 14: links


def test_a_linked_run_folder_is_not_written_through(small: DemoInfo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "func").symlink_to(outside)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    victim = outside / f".important.tsv.tmp-{outputs._HOST}-{int(dead.stdout)}-0123abcd"
    victim.write_text("not ours")
    assert _cli(small.root, out) == 1  # the run fails, with its reason
    assert sorted(p.name for p in outside.iterdir()) == [victim.name]
    assert victim.read_text() == "not ours"

    paths = outputs.run_paths(out, {"subject": "01", "task": "rest"}, atlas="A", desc="d")
    table, _, digest = _pair(1)
    with pytest.raises(OutputError, match="symbolic link"):
        outputs.write_run(paths, table, [f"s{i}" for i in range(6)], {"ParametersHash": digest})
    assert outputs.remove_stale_temps(paths.directory, root=out) == []
    assert sorted(p.name for p in outside.iterdir()) == [victim.name]


def test_output_dir_linking_to_the_input_is_refused_before_anything_is_created(
    small: DemoInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link"
    link.symlink_to(small.root)
    before = sorted(p.name for p in small.root.iterdir())
    assert main([str(small.root), str(link), "participant"]) == 64
    assert "is the input dataset" in capsys.readouterr().err
    assert sorted(p.name for p in small.root.iterdir()) == before


def test_output_dir_that_is_the_found_fmriprep_dataset_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bids_dir is the raw dataset; output_dir is the fMRIPrep dataset found inside it
    (not given with --derivatives): refused with 64 before .work is made inside it."""
    from bids_spheres.app.demo import build_dataset

    demo = build_dataset(
        tmp_path / "raw", layout="raw+derivatives", n_subjects=1, n_runs=1, n_volumes=40
    )
    before = sorted(p.name for p in demo.fmriprep_dir.iterdir())
    assert main([str(demo.root), str(demo.fmriprep_dir), "participant"]) == 64
    assert "is the fMRIPrep dataset" in capsys.readouterr().err
    assert sorted(p.name for p in demo.fmriprep_dir.iterdir()) == before


def test_hash_of_a_mask_file_does_not_depend_on_its_directory(
    small: DemoInfo, tmp_path: Path
) -> None:
    """``--mask PATH``: the same mask file at two mounts gives one hash, other content another."""
    mask = _func(small.root, "*space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz")
    one, two = tmp_path / "one" / "mask.nii.gz", tmp_path / "two" / "mask.nii.gz"
    for path in (one, two):
        path.parent.mkdir()
        shutil.copyfile(mask, path)
    a = run.plan(_task(small.root, tmp_path / "out", mask=str(one))).digest
    b = run.plan(_task(small.root, tmp_path / "out", mask=str(two))).digest
    assert a == b
    _same_size_edit(two)
    assert run.plan(_task(small.root, tmp_path / "out", mask=str(two))).digest != a


def test_a_killed_runs_carpet_temp_is_removed_on_rerun(small: DemoInfo, tmp_path: Path) -> None:
    # the carpet is written first, into figures/: a job killed there leaves its temporary
    # file beside the carpets, and the rerun's plan removes it as it does in the run folder
    out = tmp_path / "out"
    assert _cli(small.root, out) == 0
    (carpet,) = out.glob("sub-*/figures/*_carpet.svg")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stale = carpet.with_name(f".{carpet.name}.tmp-{outputs._HOST}-{int(dead.stdout)}-0123abcd")
    stale.write_text("<svg")
    assert _cli(small.root, out) == 0
    assert not stale.exists()
    assert carpet.is_file()
