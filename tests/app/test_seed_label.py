"""The seed table records the radius used; the seed set has one label everywhere (issue 14, 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from cli_helpers import run_participant

from bids_spheres.app.demo import DEMO_SEEDS, DemoInfo


def _seeds_without_radius(path: Path) -> Path:
    """Two demo seeds in a TSV with no radius column, named with an underscore."""
    rows = ["name\tx\ty\tz"] + [
        f"{seed.name}\t{seed.x:g}\t{seed.y:g}\t{seed.z:g}" for seed in DEMO_SEEDS[:2]
    ]
    path.write_text("\n".join(rows) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"Space": "MNI152NLin2009cAsym"}))
    return path


def test_seed_table_records_the_radius_used_and_one_label(
    demo_small: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    seeds_tsv = _seeds_without_radius(tmp_path / "my_seeds.tsv")
    out = tmp_path / "out"
    assert run_participant(data.root, out, "--seeds", str(seeds_tsv), "--radius", "6") == 0
    table = pd.read_csv(out / "atlas-myseeds_seeds.tsv", sep="\t", na_values="n/a")
    assert table["radius"].tolist() == [6.0, 6.0]  # not n/a: the --radius used
    meta = json.loads((out / "atlas-myseeds_seeds.json").read_text())
    assert meta["Name"] == "myseeds"
    (timeseries,) = sorted(out.glob("sub-*/func/*_timeseries.json"))
    assert "_atlas-myseeds_" in timeseries.name
    sidecar = json.loads(timeseries.read_text())
    assert sidecar["SeedSet"] == "myseeds"
    assert "my_seeds" not in sidecar["Description"]
    assert {info["RadiusMM"] for info in sidecar["Seeds"].values()} == {6.0}


def test_demo_seed_label_is_the_same_in_names_and_sidecars(
    demo_small: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out) == 0
    (timeseries,) = sorted(out.glob("sub-*/func/*_timeseries.json"))
    label = timeseries.name.split("_atlas-")[1].split("_")[0]
    assert label == "demoseeds"
    assert json.loads(timeseries.read_text())["SeedSet"] == label
    assert json.loads((out / f"atlas-{label}_seeds.json").read_text())["Name"] == label
    table = pd.read_csv(out / f"atlas-{label}_seeds.tsv", sep="\t")
    assert table["radius"].notna().all()
