"""README: the Outputs, provenance and citation sections match what the app writes (14, 6)."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from cli_helpers import run_participant

from bids_spheres.app import provenance
from bids_spheres.app.demo import DemoInfo

README = Path(__file__).parents[2] / "README.md"


def _outputs_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("### Outputs") : text.index("## Group level")]


def test_readme_lists_every_top_level_output_and_only_those(
    demo_small: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out) == 0
    block = _outputs_section().split("```")[1]
    listed = set()
    for line in block.splitlines():
        if line.startswith("OUT/"):
            top = line.split()[0].split("/")[1].rstrip(",")
            top = re.sub(r"<[^>]+>", "*", re.sub(r"^sub-\w+", "sub-*", top))
            listed.add(top)
            if "(+ .json)" in line:
                listed.add(top.replace(".tsv", ".json"))
    written = {p.name for p in out.iterdir() if p.name not in (".work", ".bids_spheres.lock")}
    for name in written:
        assert any(fnmatch.fnmatchcase(name, p) for p in listed), f"{name} not in the README"
    for pattern in listed:
        assert any(fnmatch.fnmatchcase(w, pattern) for w in written), f"{pattern} not written"
    logs = {p.name for p in (out / "logs").iterdir()}
    assert logs == {"CITATION.md", "CITATION.html", "CITATION.bib"}
    assert "OUT/logs/CITATION.md, .html, .bib" in block


def test_readme_names_the_provenance_the_sidecars_hold(
    demo_small: DemoInfo, copy_demo, tmp_path: Path
) -> None:
    data = copy_demo(demo_small, tmp_path / "ds")
    out = tmp_path / "out"
    assert run_participant(data.root, out) == 0
    section = " ".join(_outputs_section().split())
    (path,) = sorted(out.glob("sub-*/func/*_timeseries.json"))
    sidecar = json.loads(path.read_text())
    for key in ("Sources", "GeneratedBy", "CommandLine", "SoftwareVersions", "OutputChecksums",
                "ParametersHash"):  # fmt: skip
        assert key in sidecar and f"`{key}`" in section, key
    for name in sidecar["SoftwareVersions"]:
        assert name.lower() in section.lower(), name
    assert f"`{provenance.CONTAINER_ENV}`" in section
    description = json.loads((out / "dataset_description.json").read_text())
    link = description["DatasetLinks"]["fmriprep"]
    assert link == "../ds"  # relative to OUT, as the README's example
    assert '`"fmriprep": "../fmriprep"`' in section
    assert sidecar["Sources"][0].startswith("bids:fmriprep:sub-01/func/")
    assert "`bids:fmriprep:sub-01/func/...`" in section
    table = (out / "atlas-demoseeds_seeds.tsv").read_text()
    assert "`atlas-demoseeds`" in section and table.startswith("name\tx\ty\tz\tradius")
