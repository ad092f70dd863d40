"""Discovery benchmark: a 500-subject fMRIPrep tree of empty placeholder files.

Times, each in a fresh process: the default pybids indexer
(``BIDSLayout(root, validate=False, is_derivative=True)``), ours
(:func:`bids_spheres.app.discovery.make_layout` into a new database directory),
ours again reusing that database (a second start), and ``collect_runs`` over
all runs. The tree has what fMRIPrep 23 writes per subject (anat/, figures/,
func/ with two runs in two spaces plus CIFTI, surfaces and transforms, log/).

    python benchmarks/bench_discovery.py [--subjects 500] [--skip-default]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_tree(root: Path, n_subjects: int) -> int:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "fMRIPrep - fMRI PREProcessing workflow",
                "BIDSVersion": "1.8.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}],
            }
        )
    )
    n = 0
    for s in range(1, n_subjects + 1):
        sub = f"sub-{s:04d}"
        anat, func = root / sub / "anat", root / sub / "func"
        figs, log = root / sub / "figures", root / sub / "log" / "20240101-000000_abc"
        for d in (anat, func, figs, log):
            d.mkdir(parents=True)
        names = [
            anat / f"{sub}_{x}"
            for x in (
                "desc-preproc_T1w.nii.gz",
                "desc-brain_mask.nii.gz",
                "dseg.nii.gz",
                "label-GM_probseg.nii.gz",
                "label-WM_probseg.nii.gz",
                "label-CSF_probseg.nii.gz",
                "from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5",
                "from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
                "hemi-L_pial.surf.gii",
                "hemi-R_pial.surf.gii",
                "hemi-L_white.surf.gii",
                "hemi-R_white.surf.gii",
                "space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz",
            )
        ]
        for run in (1, 2):
            stem = f"{sub}_task-rest_run-{run}"
            for space in ("MNI152NLin2009cAsym_res-2", "T1w"):
                for suffix in (
                    "desc-preproc_bold.nii.gz",
                    "desc-preproc_bold.json",
                    "desc-brain_mask.nii.gz",
                    "boldref.nii.gz",
                ):
                    names.append(func / f"{stem}_space-{space}_{suffix}")
            names += [
                func / f"{stem}_{x}"
                for x in (
                    "desc-confounds_timeseries.tsv",
                    "desc-confounds_timeseries.json",
                    "space-fsLR_den-91k_bold.dtseries.nii",
                    "space-fsLR_den-91k_bold.json",
                    "hemi-L_space-fsaverage5_bold.func.gii",
                    "hemi-R_space-fsaverage5_bold.func.gii",
                    "from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt",
                    "desc-hmc_boldref.nii.gz",
                )
            ]
        names += [
            figs / f"{sub}_task-rest_run-{r}_desc-{d}_bold.svg"
            for r in (1, 2)
            for d in ("carpetplot", "coreg", "rois", "compcorvar", "confoundcorr")
        ]
        names += [log / "fmriprep.toml", root / f"{sub}.html"]
        for path in names:
            if path.suffix == ".json":
                path.write_text("{}")  # pybids parses sidecars
            else:
                path.touch()
        n += len(names)
    for name in ("MNI152NLin2009cAsym", "T1w"):
        (root / f"task-rest_space-{name}_bold.json").write_text('{"RepetitionTime": 2.0}')
    return n


CHILD = {
    "default": """
import sys, time
t = time.perf_counter()
from bids import BIDSLayout
layout = BIDSLayout(sys.argv[1], validate=False, is_derivative=True)
print(time.perf_counter() - t, len(layout.get(return_type="filename")))
""",
    "ours": """
import sys, time
t = time.perf_counter()
from bids_spheres.app.discovery import make_layout, collect_runs
layout = make_layout(sys.argv[1], sys.argv[2])
t1 = time.perf_counter()
runs = collect_runs(layout, space="MNI152NLin2009cAsym:res-2")
print(t1 - t, len(runs), time.perf_counter() - t1)
""",
}


def child(kind: str, *args: str) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD[kind], *args], capture_output=True, text=True, check=True
    )
    return [float(v) for v in done.stdout.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=500)
    parser.add_argument(
        "--skip-default",
        action="store_true",
        help="skip the default pybids indexer (about 85 s for 500 subjects)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, db = Path(tmp) / "fmriprep", Path(tmp) / "db"
        t = time.perf_counter()
        n_files = build_tree(root, args.subjects)
        print(
            f"{args.subjects} subjects, {n_files} files (built in {time.perf_counter() - t:.1f} s)"
        )
        if not args.skip_default:
            seconds, indexed = child("default", str(root))
            print(f"default pybids BIDSLayout:          {seconds:7.2f} s ({indexed:.0f} files)")
        first, n_runs, collect = child("ours", str(root), str(db))
        print(f"bids_spheres make_layout, first:    {first:7.2f} s")
        second, _, _ = child("ours", str(root), str(db))
        print(f"bids_spheres make_layout, reused:   {second:7.2f} s")
        print(f"collect_runs ({n_runs:.0f} runs):           {collect:7.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
