"""The group level on hand-edited or odd participant outputs, and on odd seed names.

A bad run becomes a row with its reason (the report is still written); a file
name that is not ours is skipped with a warning; seed and network names with
``"`` or ``$`` reach the group tables and the report exactly as written.
Participant outputs are made once by the real CLI on the shared demo.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bids_spheres.app import cli
from bids_spheres.app.demo import DemoInfo


@pytest.fixture(autouse=True)
def _plain_logger():
    """Undo what ``cli.main`` does to the package logger (its handler, no propagation)."""
    logger = logging.getLogger("bids_spheres")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers, logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def _participant(demo: DemoInfo, out: Path, seeds: Path) -> None:
    argv = [str(demo.root), str(out), "participant", "--seeds", str(seeds)]
    assert cli.main([*argv, "--work-dir", str(out.parent / "work"), "-q"]) == 0


def _group(demo: DemoInfo, out: Path) -> int:
    argv = [str(demo.root), str(out), "group", "--min-volumes", "20"]
    return cli.main([*argv, "--work-dir", str(out.parent / "work-group")])


@pytest.fixture(scope="module")
def written(demo_one_run: DemoInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Participant outputs of the 2-run demo (shared by the tests: they copy it)."""
    out = tmp_path_factory.mktemp("group_hostile") / "out"
    _participant(demo_one_run, out, demo_one_run.seeds_tsv)
    return out


def _copy(written: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(written, out, symlinks=True)
    return out


def _runs_table(out: Path) -> pd.DataFrame:
    (path,) = (out / "group").glob("*_runs.tsv")
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _row_of(table: pd.DataFrame, needle: str) -> pd.Series:
    (i,) = [i for i, t in enumerate(table["timeseries"]) if needle in t]
    return table.iloc[i]


def test_hand_edited_missing_seeds_is_a_row_with_its_reason(
    demo_one_run: DemoInfo, written: Path, tmp_path: Path
) -> None:
    out = _copy(written, tmp_path)
    sidecar = sorted(out.glob("sub-01/func/*_timeseries.json"))[0]
    content = json.loads(sidecar.read_text())
    content["MissingSeeds"] = 5
    sidecar.write_text(json.dumps(content))
    assert _group(demo_one_run, out) == 0
    assert (out / "group" / "report.html").is_file()
    table = _runs_table(out)
    assert len(table) == 2
    bad = _row_of(table, sidecar.name.replace(".json", ".tsv"))
    assert bad["usable"] == "no"
    assert "MissingSeeds is 5, not a list of seed names" in bad["exclusion_reason"]
    assert _row_of(table, "sub-02")["usable"] == "yes"
    report = (out / "group" / "report.html").read_text()
    assert html.escape("MissingSeeds is 5", quote=True) in report


def test_relmat_symlink_loop_is_a_row_with_its_reason(
    demo_one_run: DemoInfo, written: Path, tmp_path: Path
) -> None:
    out = _copy(written, tmp_path)
    relmat = sorted(out.glob("sub-01/func/*_relmat.tsv"))[0]
    relmat.unlink()
    relmat.symlink_to(relmat.name)  # a link to itself: ELOOP
    assert _group(demo_one_run, out) == 0
    assert (out / "group" / "report.html").is_file()
    table = _runs_table(out)
    assert len(table) == 2
    bad = _row_of(table, "sub-01")
    assert bad["usable"] == "no"
    assert bad["exclusion_reason"].startswith(f"unreadable {relmat.name}")
    assert "symbolic links" in bad["exclusion_reason"]
    assert _row_of(table, "sub-02")["usable"] == "yes"


def test_stray_file_with_a_hyphen_in_a_value_is_skipped_with_a_warning(
    demo_one_run: DemoInfo,
    written: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _copy(written, tmp_path)
    tsv = sorted(out.glob("sub-01/func/*_timeseries.tsv"))[0]
    stray = tsv.with_name("sub-01_task-rest_atlas-my-atlas_desc-simple_timeseries.tsv")
    shutil.copy(tsv, stray)
    shutil.copy(tsv.with_suffix(".json"), stray.with_suffix(".json"))
    assert _group(demo_one_run, out) == 0
    assert (out / "group" / "report.html").is_file()
    table = _runs_table(out)
    assert len(table) == 2 and (table["usable"] == "yes").all()
    assert not list((out / "group").glob("*my*"))
    err = capsys.readouterr().err
    assert f"ignored {stray}: not a file name bids_spheres writes" in err


ODD_SEED = '"q"b'  # a leading quote: a CSV reader would strip it
MATH_SEED = "$x$"
MATH_NETWORK = "$x^{$"  # invalid mathtext: matplotlib raised on it


def test_odd_seed_and_network_names_round_trip_to_the_group_and_report(
    demo_one_run: DemoInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    drawn: list[tuple[str, bool]] = []  # every text of every report figure, as drawn
    savefig = Figure.savefig

    def spy(fig: Figure, *args: object, **kwargs: object) -> object:
        fig.canvas.draw()  # creates the tick labels too
        drawn.extend((t.get_text(), t.get_parse_math()) for t in fig.findobj(Text))
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    seeds = pd.read_csv(demo_one_run.seeds_tsv, sep="\t")
    names = list(seeds["name"])
    names[0], names[1] = ODD_SEED, MATH_SEED
    seeds["name"] = names
    seeds["network"] = [MATH_NETWORK, *seeds["network"][1:]]
    seeds_tsv = tmp_path / "odd_seeds.tsv"
    seeds.to_csv(seeds_tsv, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    assert seeds_tsv.read_text().splitlines()[1].startswith('"q"b\t')
    out = tmp_path / "out"
    _participant(demo_one_run, out, seeds_tsv)
    assert _group(demo_one_run, out) == 0
    group = out / "group"
    (mean,) = group.glob("*_meas-FisherZMean_*_relmat.tsv")
    header = mean.read_text().splitlines()[0].split("\t")
    assert header == names  # no phantom seed 'qb'
    (seed_table,) = [p for p in group.glob("*_seeds.tsv")]
    rows = [line.split("\t") for line in seed_table.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == names
    assert rows[0][5] == MATH_NETWORK
    assert (group / "report.html").is_file()
    texts = {text for text, _ in drawn}
    assert {ODD_SEED, MATH_SEED, MATH_NETWORK} <= texts  # drawn exactly as named
    assert "qb" not in texts
    assert not [text for text, math in drawn if "$" in text and math]  # no mathtext


def test_unreadable_func_folder_is_a_warning_not_an_abort(
    written: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    demo_one_run: DemoInfo,
) -> None:
    """A participant's func folder that cannot be listed (root ignores permissions, so
    os.scandir is made to fail for it) leaves its runs out with a warning naming it;
    the other participant's runs are summarized and the report is written."""
    import os

    out = _copy(written, tmp_path)
    blocked = next(out.glob("sub-02/func"))
    real_scandir = os.scandir

    def scandir(path=None):
        if path is not None and Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path) if path is not None else real_scandir()

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="bids_spheres"):
        code = _group(demo_one_run, out)
    assert code == 0
    assert (out / "group" / "report.html").is_file()
    assert f"cannot read the folder {blocked} (Permission denied)" in caplog.text
    assert set(_runs_table(out)["participant_id"]) == {"sub-01"}


def test_a_huge_integer_in_a_sidecar_is_an_excluded_value_not_an_abort(
    written: Path, tmp_path: Path, demo_one_run: DemoInfo
) -> None:
    out = _copy(written, tmp_path)
    sidecar = next(out.glob("sub-01/func/*_timeseries.json"))
    text = sidecar.read_text()
    data = json.loads(text)
    data["MeanFramewiseDisplacement"] = 10**400
    sidecar.write_text(json.dumps(data))
    assert _group(demo_one_run, out) == 0
    assert (out / "group" / "report.html").is_file()
