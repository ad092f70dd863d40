"""The dataset-level files of the derivative dataset, written once per participant-level job.

Promise
-------
:func:`write_dataset_files` writes, in ``output_dir`` and under its lock
(:func:`bids_spheres.app.outputs.dataset_lock`, safe for jobs running at once):

* ``dataset_description.json``: ``GeneratedBy`` (bids_spheres with ``CodeURL``
  and, from the image, ``Container``; then fMRIPrep's entries),
  ``SourceDatasets`` (the fMRIPrep dataset as ``bids:fmriprep:``, its version and
  DOI when its description gives one) and ``DatasetLinks`` (the input datasets by
  paths relative to ``output_dir``: :func:`bids_spheres.app.provenance.dataset_links`);
  no absolute path;
* ``.bidsignore``;
* ``atlas-<label>_seeds.tsv`` and ``.json``: the seed table with the radius
  *used* (the seed file's, else ``--radius``), and its sidecar naming the seed
  set by its label (the ``atlas-`` entity, also the run sidecars' ``SeedSet``),
  its space, citation and source file (portable name and SHA-256);
* ``README.md`` (when absent: a user's edits are kept; with ``--maps`` it lists the
  map files, and replaces our own unedited README of a job without them);
* ``logs/CITATION.md``, ``.html`` and ``.bib``: the methods text of this
  invocation (:mod:`bids_spheres.app.citation`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bids_spheres import __version__
from bids_spheres.app import citation, outputs, provenance
from bids_spheres.app.config import RunConfig

__all__ = ["dataset_readme", "write_dataset_files"]


def write_dataset_files(
    config: RunConfig,
    fmriprep_root: Path,
    seed_set: Any,
    strategy: Any,
    *,
    native_template: str | None = None,
) -> citation.Methods:
    """Write the dataset-level files (see the module docstring); return the methods text.

    ``native_template`` is the template whose transforms carry the seeds into a
    native run space, for the methods text (:func:`bids_spheres.app.citation.methods`).

    Raises
    ------
    OutputError
        A file cannot be written, or a different dataset description or seed
        table is already there.
    """
    output_dir = config.output_dir
    description = _read_json(fmriprep_root / "dataset_description.json")
    roots = provenance.input_roots(config.bids_dir, fmriprep_root)
    ours = provenance.generated_by()
    outputs.write_dataset_description(
        output_dir,
        version=__version__,
        fmriprep_description=description,
        source_datasets=[_source_dataset(description)],
        dataset_links=provenance.dataset_links(
            output_dir, roots, templateflow=config.mask == "template"
        ),
        code_url=ours["CodeURL"],
        container=ours.get("Container"),
    )
    outputs.write_bidsignore(output_dir)
    outputs.remove_stale_temps(output_dir)
    table = seed_set.to_dataframe()
    table["radius"] = seed_set.resolve_radii(config.radius)
    outputs.write_seed_table(
        output_dir,
        table,
        seed_set.label,
        {
            "Name": seed_set.label,
            "Space": seed_set.space,
            "Citation": seed_set.citation,
            "Source": provenance.portable_path(seed_set.source, roots),
            "SourceSHA256": hashlib.sha256(Path(seed_set.source).read_bytes()).hexdigest(),
            "radius": {
                "Description": "Sphere radius used: the seed file's, else --radius.",
                "Units": "mm",
            },
        },
    )
    readme = output_dir / "README.md"
    if config.maps and readme.is_file() and readme.read_bytes() == dataset_readme().encode():
        # ours, unedited, from a job without --maps: now it lists the maps too
        outputs.atomic_write_text(readme, dataset_readme(maps=True))
    else:
        outputs.write_text_if_absent(output_dir, "README.md", dataset_readme(maps=config.maps))
    text = citation.methods(
        config,
        seed_set,
        strategy,
        fmriprep_version=_fmriprep_version(description),
        native_template=native_template,
    )
    citation.write(output_dir, text)
    return text  # also shown in each participant's report


def dataset_readme(maps: bool = False) -> str:
    """The ``README.md`` of the derivative dataset: what its files are, where the methods are.

    Parameters
    ----------
    maps : bool
        List the seed-to-voxel map files too (``--maps``).
    """
    map_files = (
        """- `..._atlas-<label>_seed-<seed>_stat-r_desc-<strategy>_boldmap.nii.gz` and
  `..._stat-fisherz_desc-<strategy>_boldmap.nii.gz` (`--maps`), each with a `.json`: the
  seed's correlation map (Pearson r with every brain-mask voxel) and its Fisher z.
"""
        if maps
        else ""
    )
    group_maps = (
        """- `group/space-<space>_atlas-<label>_seed-<seed>_stat-effect_desc-<strategy>_statmap.nii.gz`
  and `..._stat-t_desc-<strategy>_statmap.nii.gz`: the mean Fisher z across participants and
  its one-sample t map, when the group level was run.
"""  # noqa: E501 (a file name)
        if maps
        else ""
    )
    return f"""# bids_spheres derivatives

Sphere (seed) timeseries extracted from fMRIPrep outputs by bids_spheres {__version__}
({provenance.CODE_URL}).

## Files

- `dataset_description.json`: who made this dataset (`GeneratedBy`, with the container
  image when it ran from one) and from what (`SourceDatasets`, and `DatasetLinks`, which
  resolves the `bids:fmriprep:...` names of the sidecars to the fMRIPrep dataset by a
  path relative to this folder).
- `atlas-<label>_seeds.tsv` / `.json`: the seeds (name, x, y, z in mm, the radius used,
  network), their space, citation and source file.
- `sub-<label>/[ses-<label>/]func/*_atlas-<label>_desc-<strategy>_timeseries.tsv`: one
  column per seed, one row per kept volume; `n/a` for a seed whose sphere is not
  usable in that run.
- `..._timeseries.json`: the run's provenance: `Sources` (BIDS URIs of every input
  file), the seeds with their voxel counts, coverage and temporal SNR, the kept and
  censored volumes, the confounds used, the cleaning parameters, `ParametersHash`,
  `GeneratedBy`, `CommandLine` and `SoftwareVersions`.
- `..._meas-PearsonCorrelation_desc-<strategy>_relmat.tsv` / `.json`: the run's
  seed-by-seed correlation matrix.
{map_files}- `group/`: the group level (QC tables, connectome, report), when it was run.
{group_maps}- `logs/CITATION.md`, `CITATION.html`, `CITATION.bib`: a methods section written from
  the parameters used, with its references.

No JSON, TSV or methods file names an absolute path, so the dataset can be moved, or
processed on another machine or in a container, without changing its provenance: a rerun
with the same inputs and parameters skips the runs already written.
"""


def _source_dataset(description: dict[str, Any] | None) -> dict[str, str]:
    entry = {"URL": f"bids:{provenance.FMRIPREP_LINK}:"}
    version = _fmriprep_version(description)
    if version:
        entry["Version"] = version
    doi = (description or {}).get("DatasetDOI")
    if isinstance(doi, str) and doi.strip():
        entry["DOI"] = doi.strip()
    return entry


def _fmriprep_version(description: dict[str, Any] | None) -> str | None:
    for entry in outputs.upstream_generated_by(description):
        if str(entry.get("Name", "")).lower() == "fmriprep" and entry.get("Version"):
            return str(entry["Version"])
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
