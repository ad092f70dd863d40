"""Provenance that travels (issue 14, item 3): BIDS URIs, no absolute path, mount-free hashes.

The same dataset processed from two mount points gives byte-identical sidecars
and hashes; a moved dataset is not reprocessed; ``GeneratedBy`` carries
``CodeURL`` and, from the image, ``Container``; the run sidecar records the
command line and the libraries' versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_participant

from bids_spheres.app import cli, provenance
from bids_spheres.app.demo import DemoInfo

_TEXT_SUFFIXES = {".json", ".tsv", ".md", ".bib", ".html", ".bidsignore"}


def _written_texts(out: Path) -> dict[str, str]:
    """Every text file the participant level wrote (not the work folder), by relative path."""
    return {
        path.relative_to(out).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(out.rglob("*"))
        if path.is_file()
        and ".work" not in path.parts
        and (path.suffix in _TEXT_SUFFIXES or path.name == ".bidsignore")
    }


def _sidecar(out: Path) -> dict:
    (path,) = sorted(out.glob("sub-*/func/*_timeseries.json"))
    return json.loads(path.read_text())


def _copy_with_files(info: DemoInfo, copy_demo, base: Path) -> tuple[DemoInfo, list[str]]:
    """The demo at ``base/ds``, a mask and a strategy file outside it, and their options."""
    data = copy_demo(info, base / "ds")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    (mask,) = sorted(data.root.glob("sub-*/func/*MNI152NLin2009cAsym_desc-brain_mask.nii.gz"))
    shutil.copy2(mask, elsewhere / "brain.nii.gz")
    strategy = Path(__file__).parents[2] / "bids_spheres" / "data" / "strategies" / "24p.json"
    shutil.copy2(strategy, elsewhere / "mystrategy.json")
    options = [
        "--mask",
        str(elsewhere / "brain.nii.gz"),
        "--denoise-strategy",
        str(elsewhere / "mystrategy.json"),
    ]
    return data, options


@pytest.mark.parametrize("with_files", [False, True], ids=["defaults", "mask+strategy files"])
def test_two_mount_points_give_identical_outputs_without_absolute_paths(
    demo_small: DemoInfo, copy_demo, tmp_path: Path, with_files: bool
) -> None:
    written = {}
    for mount in ("host", "container"):
        base = tmp_path / mount / "study"
        if with_files:
            data, options = _copy_with_files(demo_small, copy_demo, base)
        else:
            data, options = copy_demo(demo_small, base / "ds"), []
        out = base / "out"
        assert run_participant(data.root, out, *options) == 0
        texts = _written_texts(out)
        for name, text in texts.items():  # no absolute path of the input, output or work dir
            assert str(tmp_path) not in text, f"{name} holds an absolute path"
        written[mount] = texts
    assert written["host"].keys() == written["container"].keys()
    assert {n for n in written["host"] if n.endswith("_timeseries.json")}
    for name, text in written["host"].items():
        assert text == written["container"][name], f"{name} differs between the mounts"
    sidecar = json.loads(
        next(t for n, t in written["host"].items() if n.endswith("_timeseries.json"))
    )
    outside = [s for s in sidecar["Sources"] if not s.startswith("bids:fmriprep:sub-01/func/")]
    assert outside == (["brain.nii.gz"] if with_files else [])  # a file outside: its name
    assert sidecar["Denoising"]["confounds_file"].startswith("bids:fmriprep:sub-01/func/")
    description = json.loads(written["host"]["dataset_description.json"])
    assert description["DatasetLinks"] == {"fmriprep": "../ds"}
    assert description["SourceDatasets"][0]["URL"] == "bids:fmriprep:"
    if with_files:
        assert sidecar["CleaningParameters"]["mask"] == "brain.nii.gz"
        assert sidecar["CleaningParameters"]["denoise_strategy"] == "mystrategy.json"
        assert sidecar["Denoising"]["strategy_source"] == "mystrategy.json"
        assert sidecar["Mask"] == "brain.nii.gz"


def test_moved_dataset_is_not_reprocessed_and_its_link_follows(
    demo_small: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    data = copy_demo(demo_small, tmp_path / "a" / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out) == 0
    (timeseries,) = sorted(out.glob("sub-*/func/*_timeseries.json"))
    before = timeseries.stat()
    moved = tmp_path / "b" / "elsewhere" / "fmriprep"
    moved.parent.mkdir(parents=True)
    shutil.move(data.root, moved)
    assert run_participant(moved, out) == 0
    after = timeseries.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert links == {"fmriprep": "../b/elsewhere/fmriprep"}
    assert (out / links["fmriprep"] / "dataset_description.json").is_file()


def test_container_run_of_host_outputs_skips_them_and_records_the_image(
    demo_small: DemoInfo, copy_demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = copy_demo(demo_small, tmp_path / "home" / "study" / "fmriprep")
    out = tmp_path / "home" / "study" / "bids_spheres"
    assert run_participant(host.root, out) == 0
    host_sidecar = _sidecar(out)
    assert host_sidecar["GeneratedBy"] == [
        {"Name": "bids_spheres", "Version": host_sidecar["GeneratedBy"][0]["Version"],
         "CodeURL": provenance.CODE_URL}
    ]  # fmt: skip
    (timeseries,) = sorted(out.glob("sub-*/func/*_timeseries.json"))
    stamp = timeseries.stat().st_mtime_ns

    # the image: the same data at /data, the outputs at /out, the tag in the environment
    mounted = tmp_path / "data"
    shutil.copytree(host.root, mounted, copy_function=shutil.copy2)
    monkeypatch.setenv(provenance.CONTAINER_ENV, "bids_spheres/bids_spheres:0.1.0")
    assert run_participant(mounted, out) == 0
    assert timeseries.stat().st_mtime_ns == stamp  # same ParametersHash: not reprocessed
    generated = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert generated["CodeURL"] == provenance.CODE_URL
    assert generated["Container"] == {"Type": "docker", "Tag": "bids_spheres/bids_spheres:0.1.0"}

    # a new run written in the container carries the image in its own sidecar too
    assert run_participant(mounted, out, "--overwrite") == 0
    sidecar = _sidecar(out)
    assert sidecar["GeneratedBy"][0]["Container"]["Tag"] == "bids_spheres/bids_spheres:0.1.0"
    assert sidecar["ParametersHash"] == host_sidecar["ParametersHash"]


def test_container_type_from_the_runtime() -> None:
    tag = {provenance.CONTAINER_ENV: "bids_spheres/bids_spheres:0.1.0"}
    assert provenance.container({}) is None
    assert provenance.container({provenance.CONTAINER_ENV: " "}) is None
    assert provenance.container(tag) == {"Type": "docker", "Tag": tag[provenance.CONTAINER_ENV]}
    assert provenance.container({**tag, "APPTAINER_CONTAINER": "/x.sif"})["Type"] == "apptainer"
    assert provenance.container({**tag, "SINGULARITY_CONTAINER": "/x.sif"})["Type"] == (
        "singularity"
    )
    sif = {**tag, provenance.CONTAINER_TYPE_ENV: "apptainer"}  # apptainer.def's environment
    assert provenance.container(sif)["Type"] == "apptainer"


def test_the_container_variables_are_the_ones_the_images_set() -> None:
    root = Path(__file__).resolve().parents[2]
    dockerfile = (root / "Dockerfile").read_text(encoding="utf-8")
    recipe = (root / "apptainer.def").read_text(encoding="utf-8")
    for name in (provenance.CONTAINER_ENV, provenance.CONTAINER_TYPE_ENV):
        assert f"{name}=" in dockerfile, name
        assert f"export {name}=" in recipe, name


def test_run_sidecar_records_the_command_line_and_library_versions(
    demo_small: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out, "--radius", "5", "--nprocs=1") == 0
    sidecar = _sidecar(out)
    assert sidecar["CommandLine"] == [
        "bids_spheres", "<bids_dir>", "<output_dir>", "participant",
        "--seeds", "<bids_dir>/code/demo_seeds.tsv", "--work-dir", "<work_dir>",
        "--radius", "5", "--nprocs=1",
    ]  # fmt: skip
    versions = sidecar["SoftwareVersions"]
    for name in ("numpy", "scipy", "nibabel", "pybids", "isal", "pandas"):
        assert versions[name] == importlib.metadata.version(name)
    assert versions["python"].count(".") == 2


def test_portable_names(tmp_path: Path) -> None:
    links = {"fmriprep": tmp_path / "deriv" / "fmriprep", "raw": tmp_path}
    bold = tmp_path / "deriv" / "fmriprep" / "sub-01" / "func" / "x_bold.nii.gz"
    assert provenance.portable_path(bold, links) == "bids:fmriprep:sub-01/func/x_bold.nii.gz"
    assert provenance.portable_path(tmp_path / "code" / "s.tsv", links) == "bids:raw:code/s.tsv"
    assert provenance.portable_path("/elsewhere/mask.nii.gz", links) == "mask.nii.gz"
    builtin = Path(provenance.__file__).parents[1] / "data" / "seeds" / "power2011.tsv"
    assert provenance.portable_path(builtin, links) == "bids_spheres/data/seeds/power2011.tsv"
    roots = provenance.input_roots(tmp_path, tmp_path / "deriv" / "fmriprep")
    assert roots == {"fmriprep": tmp_path / "deriv" / "fmriprep", "raw": tmp_path}
    assert provenance.input_roots(tmp_path, tmp_path) == {"fmriprep": tmp_path}
    assert provenance.dataset_links(tmp_path / "deriv" / "bids_spheres", roots) == {
        "fmriprep": "../fmriprep",
        "raw": "../..",
    }
    assert provenance.dataset_links(tmp_path / "o", roots, templateflow=True)["templateflow"] == (
        provenance.TEMPLATEFLOW_URL
    )


def _files_outside(base: Path, data: DemoInfo) -> dict[str, Path]:
    """Input files outside the dataset (a seeds TSV, a mask, a strategy, a filter file)."""
    _copy_with_files(data, lambda info, dest: info, base)  # the mask and strategy files
    elsewhere = base / "elsewhere"
    shutil.copy2(data.seeds_tsv, elsewhere / "myseeds.tsv")
    (elsewhere / "filter.json").write_text('{"bold": {"acquisition": null}}\n')
    return {
        "seeds": elsewhere / "myseeds.tsv",
        "mask": elsewhere / "brain.nii.gz",
        "strategy": elsewhere / "mystrategy.json",
        "filter": elsewhere / "filter.json",
        "work": base / "scratch" / "w2",
        "db": base / "scratch" / "db",
    }


# Every way argparse takes a path option's value (issue: a cold review found
# ``-w/scratch/w2`` and ``--opt=VALUE`` written verbatim into the run sidecar).
SPELLINGS = {
    "equals": lambda f: [
        f"--seeds={f['seeds']}", f"--work-dir={f['work']}", f"--mask={f['mask']}",
        f"--denoise-strategy={f['strategy']}", f"--bids-database-dir={f['db']}",
        f"--bids-filter-file={f['filter']}",
    ],
    "attached short": lambda f: ["--seeds", str(f["seeds"]), f"-w{f['work']}"],
    "short after a flag": lambda f: ["--seeds", str(f["seeds"]), f"-qw{f['work']}"],
    "short equals": lambda f: ["--seeds", str(f["seeds"]), f"-w={f['work']}"],
}  # fmt: skip


@pytest.mark.parametrize("spelling", SPELLINGS, ids=list(SPELLINGS))
def test_no_absolute_path_in_the_sidecars_whatever_the_spelling(
    demo_small: DemoInfo, copy_demo, tmp_path: Path, spelling: str
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    files = _files_outside(tmp_path, data)
    out = tmp_path / "out"
    options = SPELLINGS[spelling](files)
    assert cli.main([str(data.root), str(out), "participant", *options]) == 0
    assert sorted(out.glob("sub-*/func/*_timeseries.json"))
    for path in sorted(out.rglob("*.json")):
        if ".work" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        for root in {str(tmp_path), str(tmp_path.resolve())}:
            assert root not in text, f"{path.name} holds an absolute path: {options}"
    command = _sidecar(out)["CommandLine"]
    assert "myseeds.tsv" in " ".join(command)
    assert any(word.endswith("<work_dir>") for word in command), command


def test_abbreviated_options_are_refused(
    demo_small: DemoInfo, copy_demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse would take ``--seed`` for ``--seeds``: a spelling the sidecar cannot know."""
    data = copy_demo(demo_small, tmp_path / "ds")
    files = _files_outside(tmp_path, data)
    out = tmp_path / "out"
    argv = [str(data.root), str(out), "participant", "--seed", str(files["seeds"])]
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 64
    assert "unrecognized arguments: --seed" in capsys.readouterr().err
    assert not out.exists()
    # the BIDS-Apps spellings are aliases, not abbreviations
    args = cli.build_parser().parse_args(["in", "o", "participant", "--participant_label", "01"])
    assert args.participant_label == ["01"]


def test_the_parser_records_every_action_argparse_keeps() -> None:
    """option_spellings reads the actions the parser recorded as they were added (public
    add_argument return values); argparse's own private list is the truth here."""
    parser = cli.build_parser()
    assert [id(a) for a in parser.added_actions] == [id(a) for a in parser._actions]


def test_every_path_option_spelling_is_made_portable(tmp_path: Path) -> None:
    """Each option whose type is a path, in each form argparse accepts, for a path outside."""
    parser = cli.build_parser()
    spellings = cli.option_spellings()
    path_dests = {
        action.dest
        for action in parser._actions  # the parser's own list: a new path option is in it
        if action.option_strings and action.type in cli.PATH_TYPES
    }
    assert path_dests == {
        "seeds", "mask", "denoise_strategy", "work_dir", "bids_database_dir", "derivatives",
        "bids_filter_file",
    }  # fmt: skip
    covered = {
        action.dest for action in parser._actions if set(action.option_strings) & spellings.paths
    }
    assert covered == path_dests
    assert spellings.flags == {"-h", "-v", "-q"}
    value = str(tmp_path / "elsewhere" / "file.tsv")
    for option in sorted(spellings.paths):
        forms = [[option, value], [f"{option}={value}"]]
        if not option.startswith("--"):
            forms += [[f"{option}{value}"], [f"-v{option[1]}{value}"], [f"-qv{option[1]}{value}"]]
        for form in forms:
            line = provenance.portable_command_line(["bids_spheres", *form], {}, {}, spellings)
            assert str(tmp_path) not in " ".join(line), line
            assert line[-1].endswith("file.tsv"), line
    # a keyword stays itself; a flag's own word is kept
    assert provenance.portable_command_line(
        ["bids_spheres", "--mask=template", "-vv", "--seeds", "power2011"], {}, {}, spellings
    ) == ["bids_spheres", "--mask=template", "-vv", "--seeds", "power2011"]
