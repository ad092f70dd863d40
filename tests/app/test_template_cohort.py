"""--mask template picks the TemplateFlow mask of the run's cohort (issue 13, item 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

_CHILD = """
import sys
from bids_spheres.app import run
from bids_spheres.errors import DataError
print(run._template_mask("MNIPediatricAsym", "2", "1").name)
try:
    run._template_mask("MNIPediatricAsym", "2", None)
except DataError as exc:
    print("DataError:", exc)
"""


def test_template_mask_of_the_cohort(tmp_path: Path) -> None:
    home = tmp_path / "tf"
    tpl = home / "tpl-MNIPediatricAsym"
    tpl.mkdir(parents=True)
    (home / "dataset_description.json").write_text(
        json.dumps({"Name": "TemplateFlow", "BIDSVersion": "1.4.0"})
    )
    (tpl / "template_description.json").write_text(json.dumps({"Name": "MNIPediatricAsym"}))
    img = nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.uint8), np.eye(4))
    for cohort in ("1", "2"):
        nib.save(img, tpl / f"tpl-MNIPediatricAsym_cohort-{cohort}_res-2_desc-brain_mask.nii.gz")
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "tpl-MNIPediatricAsym_cohort-1_res-2_desc-brain_mask.nii.gz"
    assert lines[1].startswith("DataError: several TemplateFlow brain masks match")
    assert "--space MNIPediatricAsym:cohort-C" in lines[1]
