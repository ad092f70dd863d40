"""A methods section written from the parameters actually used, as fMRIPrep and xcp_d do.

Promise
-------
:func:`methods` turns one participant-level invocation (its
:class:`~bids_spheres.app.config.RunConfig`, seed set, denoising strategy and
the fMRIPrep version read from its dataset) into paragraphs and references;
:func:`write` renders them as ``OUTPUT/logs/CITATION.md`` (Markdown),
``CITATION.html`` (one self-contained page: inline style, no script, no
external resource) and ``CITATION.bib`` (BibTeX of every reference cited),
atomically, replacing those of an earlier invocation. The text states:

* the seeds: how many, the set and its citation (the ``Citation`` / ``DOI`` of
  the seed set's JSON sidecar);
* the sphere definition: every voxel whose centre lies within the radius of the
  seed, plus the voxel nearest the seed (as
  :mod:`bids_spheres.masker.geometry` computes it), the radius used, the mask,
  the coverage rule, the smoothing;
* the confound strategy and its citation, the confound columns it regresses, the
  fMRIPrep columns that gave framewise displacement (``framewise_displacement``)
  and DVARS (``std_dvars``), the non-steady-state and scrubbing rules;
* the cleaning in its order: detrending, the Butterworth filter (type, order,
  cut-offs, zero phase, confounds filtered too), confound regression,
  standardization (the order of :func:`bids_spheres.masker.signal.clean`);
* for a native-space run (``--space T1w``) with template seeds: the mapping of
  the seeds through fMRIPrep's ``from-T1w_to-<template>`` transform with
  nitransforms (the rule of :mod:`bids_spheres.app.native`);
* with ``--maps``: the seed-to-voxel correlation maps and their Fisher z
  (:mod:`bids_spheres.app.maps`), and the group maps;
* the software and the versions of the libraries that computed the numbers.

Nothing here computes on data; the text only describes.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_spheres import __version__
from bids_spheres.app import outputs, provenance
from bids_spheres.app.config import RunConfig

__all__ = ["REFERENCES", "Methods", "html_body", "methods", "write"]

#: Order of the Butterworth filter (:func:`bids_spheres.masker.signal.butterworth`).
FILTER_ORDER = 5

#: BibTeX entries by key: every reference the methods text may cite.
REFERENCES: dict[str, dict[str, str]] = {
    "power2011": {
        "type": "article",
        "author": "Power, Jonathan D. and Cohen, Alexander L. and Nelson, Steven M. and Wig, "
        "Gagan S. and Barnes, Kelly Anne and Church, Jessica A. and Vogel, Alecia C. and "
        "Laumann, Timothy O. and Miezin, Fran M. and Schlaggar, Bradley L. and Petersen, "
        "Steven E.",
        "title": "Functional network organization of the human brain",
        "journal": "Neuron",
        "volume": "72",
        "number": "4",
        "pages": "665--678",
        "year": "2011",
        "doi": "10.1016/j.neuron.2011.09.006",
    },
    "dosenbach2010": {
        "type": "article",
        "author": "Dosenbach, Nico U. F. and Nardos, Binyam and Cohen, Alexander L. and others",
        "title": "Prediction of individual brain maturity using {fMRI}",
        "journal": "Science",
        "volume": "329",
        "number": "5997",
        "pages": "1358--1361",
        "year": "2010",
        "doi": "10.1126/science.1194144",
    },
    "seitzman2020": {
        "type": "article",
        "author": "Seitzman, Benjamin A. and Gratton, Caterina and Marek, Scott and Raut, Ryan "
        "V. and Dosenbach, Nico U. F. and Schlaggar, Bradley L. and Petersen, Steven E. and "
        "Greene, Deanna J.",
        "title": "A set of functionally-defined brain regions with improved representation "
        "of the subcortex and cerebellum",
        "journal": "NeuroImage",
        "volume": "206",
        "pages": "116290",
        "year": "2020",
        "doi": "10.1016/j.neuroimage.2019.116290",
    },
    "fox2005": {
        "type": "article",
        "author": "Fox, Michael D. and Snyder, Abraham Z. and Vincent, Justin L. and Corbetta, "
        "Maurizio and Van Essen, David C. and Raichle, Marcus E.",
        "title": "The human brain is intrinsically organized into dynamic, anticorrelated "
        "functional networks",
        "journal": "Proceedings of the National Academy of Sciences",
        "volume": "102",
        "number": "27",
        "pages": "9673--9678",
        "year": "2005",
        "doi": "10.1073/pnas.0504136102",
    },
    "friston1996": {
        "type": "article",
        "author": "Friston, Karl J. and Williams, Steven and Howard, Robert and Frackowiak, "
        "Richard S. J. and Turner, Robert",
        "title": "Movement-related effects in {fMRI} time-series",
        "journal": "Magnetic Resonance in Medicine",
        "volume": "35",
        "number": "3",
        "pages": "346--355",
        "year": "1996",
        "doi": "10.1002/mrm.1910350312",
    },
    "satterthwaite2013": {
        "type": "article",
        "author": "Satterthwaite, Theodore D. and Elliott, Mark A. and Gerraty, Raphael T. "
        "and others",
        "title": "An improved framework for confound regression and filtering for control of "
        "motion artifact in the preprocessing of resting-state functional connectivity data",
        "journal": "NeuroImage",
        "volume": "64",
        "pages": "240--256",
        "year": "2013",
        "doi": "10.1016/j.neuroimage.2012.08.052",
    },
    "ciric2017": {
        "type": "article",
        "author": "Ciric, Rastko and Wolf, Daniel H. and Power, Jonathan D. and others",
        "title": "Benchmarking of participant-level confound regression strategies for the "
        "control of motion artifact in studies of functional connectivity",
        "journal": "NeuroImage",
        "volume": "154",
        "pages": "174--187",
        "year": "2017",
        "doi": "10.1016/j.neuroimage.2017.03.020",
    },
    "behzadi2007": {
        "type": "article",
        "author": "Behzadi, Yashar and Restom, Khaled and Liau, Joy and Liu, Thomas T.",
        "title": "A component based noise correction method ({CompCor}) for {BOLD} and "
        "perfusion based {fMRI}",
        "journal": "NeuroImage",
        "volume": "37",
        "number": "1",
        "pages": "90--101",
        "year": "2007",
        "doi": "10.1016/j.neuroimage.2007.04.042",
    },
    "pruim2015": {
        "type": "article",
        "author": "Pruim, Raimon H. R. and Mennes, Maarten and van Rooij, Daan and Llera, "
        "Alberto and Buitelaar, Jan K. and Beckmann, Christian F.",
        "title": "{ICA-AROMA}: A robust {ICA}-based strategy for removing motion artifacts "
        "from {fMRI} data",
        "journal": "NeuroImage",
        "volume": "112",
        "pages": "267--277",
        "year": "2015",
        "doi": "10.1016/j.neuroimage.2015.02.064",
    },
    "power2012": {
        "type": "article",
        "author": "Power, Jonathan D. and Barnes, Kelly A. and Snyder, Abraham Z. and "
        "Schlaggar, Bradley L. and Petersen, Steven E.",
        "title": "Spurious but systematic correlations in functional connectivity {MRI} "
        "networks arise from subject motion",
        "journal": "NeuroImage",
        "volume": "59",
        "number": "3",
        "pages": "2142--2154",
        "year": "2012",
        "doi": "10.1016/j.neuroimage.2011.10.018",
    },
    "power2014": {
        "type": "article",
        "author": "Power, Jonathan D. and Mitra, Anish and Laumann, Timothy O. and Snyder, "
        "Abraham Z. and Schlaggar, Bradley L. and Petersen, Steven E.",
        "title": "Methods to detect, characterize, and remove motion artifact in resting "
        "state {fMRI}",
        "journal": "NeuroImage",
        "volume": "84",
        "pages": "320--341",
        "year": "2014",
        "doi": "10.1016/j.neuroimage.2013.08.048",
    },
    "esteban2019": {
        "type": "article",
        "author": "Esteban, Oscar and Markiewicz, Christopher J. and Blair, Ross W. and others",
        "title": "{fMRIPrep}: a robust preprocessing pipeline for functional {MRI}",
        "journal": "Nature Methods",
        "volume": "16",
        "number": "1",
        "pages": "111--116",
        "year": "2019",
        "doi": "10.1038/s41592-018-0235-4",
    },
    "abraham2014": {
        "type": "article",
        "author": "Abraham, Alexandre and Pedregosa, Fabian and Eickenberg, Michael and others",
        "title": "Machine learning for neuroimaging with scikit-learn",
        "journal": "Frontiers in Neuroinformatics",
        "volume": "8",
        "pages": "14",
        "year": "2014",
        "doi": "10.3389/fninf.2014.00014",
    },
    "harris2020": {
        "type": "article",
        "author": "Harris, Charles R. and Millman, K. Jarrod and van der Walt, St{\\'e}fan J. "
        "and others",
        "title": "Array programming with {NumPy}",
        "journal": "Nature",
        "volume": "585",
        "number": "7825",
        "pages": "357--362",
        "year": "2020",
        "doi": "10.1038/s41586-020-2649-2",
    },
    "virtanen2020": {
        "type": "article",
        "author": "Virtanen, Pauli and Gommers, Ralf and Oliphant, Travis E. and others",
        "title": "{SciPy} 1.0: fundamental algorithms for scientific computing in {Python}",
        "journal": "Nature Methods",
        "volume": "17",
        "number": "3",
        "pages": "261--272",
        "year": "2020",
        "doi": "10.1038/s41592-019-0686-2",
    },
    "yarkoni2019": {
        "type": "article",
        "author": "Yarkoni, Tal and Markiewicz, Christopher J. and de la Vega, Alejandro and "
        "others",
        "title": "{PyBIDS}: {Python} tools for {BIDS} datasets",
        "journal": "Journal of Open Source Software",
        "volume": "4",
        "number": "40",
        "pages": "1294",
        "year": "2019",
        "doi": "10.21105/joss.01294",
    },
    "nibabel": {
        "type": "misc",
        "author": "Brett, Matthew and Markiewicz, Christopher J. and Hanke, Michael and others",
        "title": "nibabel",
        "publisher": "Zenodo",
        "doi": "10.5281/zenodo.591597",
    },
    "pandas": {
        "type": "misc",
        "author": "{The pandas development team}",
        "title": "pandas-dev/pandas: Pandas",
        "publisher": "Zenodo",
        "doi": "10.5281/zenodo.3509134",
    },
    "nichols2017": {
        "type": "misc",
        "author": "Nichols, Thomas E.",
        "title": "Notes on creating a standardized version of {DVARS}",
        "year": "2017",
        "eprint": "1704.01469",
        "archiveprefix": "arXiv",
    },
    "gorgolewski2016": {
        "type": "article",
        "author": "Gorgolewski, Krzysztof J. and Auer, Tibor and Calhoun, Vince D. and others",
        "title": "The brain imaging data structure, a format for organizing and describing "
        "outputs of neuroimaging experiments",
        "journal": "Scientific Data",
        "volume": "3",
        "pages": "160044",
        "year": "2016",
        "doi": "10.1038/sdata.2016.44",
    },
}

# The built-in seed sets' references (their JSON sidecars carry the same DOI).
_SEED_REFERENCES = {
    "10.1016/j.neuron.2011.09.006": "power2011",
    "10.1126/science.1194144": "dosenbach2010",
    "10.1016/j.neuroimage.2019.116290": "seitzman2020",
}
# Strategy descriptions cite papers as "Author et al. YEAR"; these are known.
_CITED_IN_DESCRIPTIONS = {
    "Fox et al. 2005": "fox2005",
    "Friston et al. 1996": "friston1996",
    "Satterthwaite et al. 2013": "satterthwaite2013",
    "Ciric et al. 2017": "ciric2017",
    "Behzadi et al. 2007": "behzadi2007",
    "Pruim et al. 2015": "pruim2015",
    "Power et al. 2014": "power2014",
}
_MODEL_TERMS = {
    "basic": "",
    "derivatives": " and their temporal derivatives",
    "power2": " and their squares",
    "full": ", their temporal derivatives, and the squares of both",
}
_MODEL_COUNT = {"basic": 1, "derivatives": 2, "power2": 2, "full": 4}
_COMPCOR_TEXT = {
    "anat_combined": "anatomical CompCor components of the combined white-matter and CSF mask",
    "anat_separated": "anatomical CompCor components of the white-matter, CSF and combined "
    "masks, separately",
    "temporal": "temporal CompCor components",
    "temporal_anat_combined": "temporal CompCor components and anatomical CompCor components "
    "of the combined white-matter and CSF mask",
    "temporal_anat_separated": "temporal CompCor components and anatomical CompCor components "
    "of the white-matter, CSF and combined masks",
}


@dataclass
class Methods:
    """The methods text: sections of paragraphs, and the reference keys cited, in order.

    A citation is written ``[@key]`` in a paragraph (as fMRIPrep's boilerplate
    does); :func:`write` turns it into ``(Author, year)`` or a numbered link.
    """

    title: str
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    references: dict[str, dict[str, str]] = field(default_factory=dict)

    def cite(self, key: str, entry: dict[str, str] | None = None) -> str:
        """``[@key]``, recording the reference (``entry`` for one not in :data:`REFERENCES`)."""
        self.references.setdefault(key, entry if entry is not None else REFERENCES[key])
        return f"[@{key}]"


def methods(
    config: RunConfig,
    seed_set: Any,
    strategy: Any,
    *,
    fmriprep_version: str | None = None,
    versions: dict[str, str] | None = None,
    native_template: str | None = None,
) -> Methods:
    """The methods text of one participant-level invocation.

    Parameters
    ----------
    config : RunConfig
        The settings used.
    seed_set : bids_spheres.app.seeds.SeedSet
        The seeds (radii as in their file; the run's ``--radius`` fills the others).
    strategy : bids_spheres.app.confounds.Strategy
        The denoising strategy.
    fmriprep_version : str, optional
        From the fMRIPrep dataset's ``GeneratedBy``.
    versions : dict, optional
        :func:`bids_spheres.app.provenance.software_versions` (default: read now).
    native_template : str, optional
        The template whose transforms carry the seeds into a native run space (the
        one :func:`bids_spheres.app.native.find_targets` chose); when not given,
        the text names the rule that chooses it.

    Returns
    -------
    Methods
    """
    versions = versions or provenance.software_versions()
    text = Methods(title="Methods: sphere (seed) timeseries with bids_spheres")
    fmriprep = f"fMRIPrep {fmriprep_version}" if fmriprep_version else "fMRIPrep"
    text.sections.append(
        (
            "Overview",
            [
                f"Sphere (seed) timeseries were extracted with bids_spheres {__version__} "
                f"from BOLD runs preprocessed with {fmriprep} {text.cite('esteban2019')}, in "
                f"the {config.space_with_res} space, and stored as BIDS derivatives "
                f"{text.cite('gorgolewski2016')}.",
            ],
        )
    )
    text.sections.append(
        ("Seeds and spheres", _seed_paragraphs(text, config, seed_set, native_template))
    )
    text.sections.append(("Confounds", _confound_paragraphs(text, config, strategy)))
    text.sections.append(("Cleaning", _cleaning_paragraphs(text, config)))
    text.sections.append(
        (
            "Connectivity",
            [
                "For each run, the Pearson correlation between every pair of sphere "
                "timeseries was computed over the kept volumes (a seed written n/a has n/a "
                "correlations).",
            ],
        )
    )
    if config.maps:
        text.sections.append(("Seed-to-voxel maps", [_maps_paragraph(config)]))
    text.sections.append(("Software", [_software_paragraph(text, versions)]))
    return text


def write(output_dir: str | os.PathLike[str], text: Methods) -> list[Path]:
    """Write ``logs/CITATION.md``, ``.html`` and ``.bib`` in ``output_dir`` (atomic).

    Returns
    -------
    list of Path
        The three files.

    Raises
    ------
    OutputError
        If they cannot be written.
    """
    logs = Path(output_dir) / "logs"
    return [
        outputs.atomic_write_text(logs / "CITATION.md", render_markdown(text)),
        outputs.atomic_write_text(logs / "CITATION.html", render_html(text)),
        outputs.atomic_write_text(logs / "CITATION.bib", render_bibtex(text)),
    ]


def render_markdown(text: Methods) -> str:
    """The Markdown page: title, sections, then the references."""
    lines = [f"# {text.title}", "", _NOTE, ""]
    for heading, paragraphs in text.sections:
        lines += [f"## {heading}", ""]
        for paragraph in paragraphs:
            lines += [_CITE.sub(lambda m: _inline(text, m), paragraph), ""]
    lines += ["## References", ""]
    lines += [f"- {_reference_text(entry)}" for entry in text.references.values()]
    return "\n".join(lines) + "\n"


def render_html(text: Methods) -> str:
    """One self-contained HTML page (inline style; no script, image or link to fetch)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(text.title)}</title>",
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.5;"
        "padding:0 1em}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}"
        "li{margin-bottom:.4em}.note{color:#555}</style>",
        "</head><body>",
        f"<h1>{html.escape(text.title)}</h1>",
        f'<p class="note">{html.escape(_NOTE)}</p>',
        html_body(text),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def html_body(text: Methods, *, level: int = 2) -> str:
    """The sections and references as an HTML fragment (headings ``<h{level}>``), escaped."""
    h = f"h{level}"
    parts = []
    for heading, paragraphs in text.sections:
        parts.append(f"<{h}>{html.escape(heading)}</{h}>")
        for paragraph in paragraphs:
            pieces = []
            last = 0
            for match in _CITE.finditer(paragraph):
                pieces.append(_code_html(paragraph[last : match.start()]))
                pieces.append(html.escape(_inline(text, match)))
                last = match.end()
            pieces.append(_code_html(paragraph[last:]))
            parts.append(f"<p>{''.join(pieces)}</p>")
    parts.append(f"<{h}>References</{h}><ol>")
    parts += [
        f'<li id="ref-{html.escape(key)}">{html.escape(_reference_text(entry))}</li>'
        for key, entry in text.references.items()
    ]
    parts.append("</ol>")
    return "\n".join(parts)


def render_bibtex(text: Methods) -> str:
    """BibTeX entries of every reference cited, in order of first citation."""
    blocks = []
    for key, entry in text.references.items():
        fields = [f"  {name} = {{{value}}}" for name, value in entry.items() if name != "type"]
        blocks.append(f"@{entry.get('type', 'misc')}{{{key},\n" + ",\n".join(fields) + "\n}")
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------
# private helpers

_NOTE = (
    "Written by bids_spheres from the parameters of this run, to be copied into a "
    "manuscript's methods and adapted; the references are in CITATION.bib."
)
_CITE = re.compile(r"\[@([A-Za-z0-9_+-]+)\]")


def _inline(text: Methods, match: re.Match[str]) -> str:
    entry = text.references[match[1]]
    first = entry.get("author", "").split(" and ")[0].split(",")[0].strip("{} ")
    several = " and " in entry.get("author", "")
    year = entry.get("year", "n.d.")
    return f"({first}{' et al.' if several else ''}, {year})"


def _reference_text(entry: dict[str, str]) -> str:
    authors = entry.get("author", "").replace("{", "").replace("}", "").replace("\\'e", "é")
    title = entry.get("title", "").replace("{", "").replace("}", "")
    where = entry.get("journal") or entry.get("publisher") or entry.get("note", "")
    if entry.get("volume"):
        where += f" {entry['volume']}"
        if entry.get("number"):
            where += f"({entry['number']})"
        if entry.get("pages"):
            where += f":{entry['pages'].replace('--', '-')}"
    year = f" ({entry['year']})" if entry.get("year") else ""
    tail = f" doi:{entry['doi']}" if entry.get("doi") else ""
    if entry.get("eprint"):
        tail = f" arXiv:{entry['eprint']}"
    return " ".join(f"{authors}{year}. {title}. {where}.{tail}".split()).replace(" .", "")


def _code_html(text: str) -> str:
    """Escape ``text``, rendering Markdown ``code`` spans as <code>."""
    pieces = text.split("`")
    return "".join(
        f"<code>{html.escape(piece)}</code>" if i % 2 else html.escape(piece)
        for i, piece in enumerate(pieces)
    )


def _seed_paragraphs(
    text: Methods, config: RunConfig, seed_set: Any, native_template: str | None
) -> list[str]:
    import numpy as np

    n = len(seed_set)
    radii = seed_set.resolve_radii(config.radius)
    given = ~np.isnan(seed_set.radii_mm)
    cite = ""
    doi = _seed_doi(seed_set)
    if doi in _SEED_REFERENCES:
        cite = " " + text.cite(_SEED_REFERENCES[doi])
    elif seed_set.citation:
        entry = {"type": "misc", "note": seed_set.citation}
        if doi:
            entry["doi"] = doi
        cite = " " + text.cite(f"seeds{seed_set.label}", entry)
    space = f" in {seed_set.space} coordinates" if seed_set.space else ""
    first = (
        f"{n} seeds of the `{seed_set.label}` seed set{cite}{space} were used "
        f"(`atlas-{seed_set.label}_seeds.tsv` lists their names, coordinates, radii and "
        "networks)."
    )
    first += _native_sentence(config, seed_set, native_template)
    if given.all():
        low, high = float(radii.min()), float(radii.max())
        size = (
            f"{low:g} mm"
            if low == high
            else f"{low:g} to {high:g} mm (per seed, from the seed file)"
        )
        radius = f"a sphere of radius {size}"
    elif given.any():
        radius = (
            f"a sphere of the radius given in the seed file, or of {config.radius:g} mm "
            "(--radius) for the seeds without one"
        )
    else:
        radius = f"a sphere of radius {config.radius:g} mm"
    mask = {
        "fmriprep": "fMRIPrep's brain mask of each run (desc-brain_mask)",
        "template": "the TemplateFlow brain mask of the space",
        "none": "no mask",
    }.get(config.mask, f"the mask file {Path(config.mask).name}")
    second = (
        f"Each seed was modelled as {radius}: a sphere holds every voxel of the BOLD grid "
        "whose centre lies within the radius of the seed (inclusive), plus the voxel "
        "nearest the seed so that no sphere inside the field of view is empty (nilearn's "
        f"NiftiSpheresMasker definition {text.cite('abraham2014')}, without the one voxel "
        "nilearn adds at the truncated seed coordinates, which can lie outside the sphere), "
        f"restricted to {mask}. The signal of a sphere is the mean over its voxels at each volume"
        + (
            f", after spatial smoothing with a Gaussian kernel of {config.smoothing_fwhm:g} mm "
            "FWHM"
            if config.smoothing_fwhm
            else ""
        )
        + f". A seed whose sphere had less than {config.min_coverage:.0%} of its voxels "
        "inside the mask was written as n/a"
        + (
            "; overlapping spheres were allowed."
            if config.allow_overlap
            else "; spheres were not allowed to share voxels."
        )
    )
    return [first, second]


def _native_sentence(config: RunConfig, seed_set: Any, template: str | None) -> str:
    """How template seeds reached a native run space (``""`` when they were not mapped)."""
    from bids_spheres.app import native

    candidates = native.template_candidates(seed_set.space, config.space)
    if candidates is None:
        return ""
    space = config.space.split(":", 1)[0]
    rule = ""
    if template is None and candidates:
        template = candidates[0]
    elif template is None:
        template = "<template>"
        rule = (
            f" `<template>` is the first of {', '.join(native.TEMPLATE_PREFERENCE)}, then of "
            "any other MNI152 template, that has such a transform, the same for every "
            "subject; each run sidecar's SeedTransform names it."
        )
    return (
        f" The seed coordinates were mapped into each subject's {space} space through "
        f"fMRIPrep's `from-{space}_to-{template}` ANTs composite transform "
        f"(`_from-{space}_to-{template}_mode-image_xfm.h5` in the subject's anat folder; in "
        f"ITK's convention the transform that resamples {space} images onto the template "
        f"maps template points into {space}) with nitransforms {_version('nitransforms')}, "
        "and the spheres were drawn around the mapped centres in the subject's space with "
        "the same radii (the run sidecars give both: CoordinatesMM, NativeCoordinatesMM)." + rule
    )


def _maps_paragraph(config: RunConfig) -> str:
    """The seed-to-voxel maps of ``--maps`` (:mod:`bids_spheres.app.maps`)."""
    which = (
        "for the seeds " + ", ".join(f"`{name}`" for name in config.map_seeds) + " (--map-seeds)"
        if config.map_seeds
        else "for every seed written (a seed written n/a has no map)"
    )
    mask = {
        "fmriprep": "fMRIPrep's brain mask of each run",
        "template": "the TemplateFlow brain mask of the space",
        "none": "fMRIPrep's brain mask of each run",
    }.get(config.mask, f"the mask file {Path(config.mask).name}")
    return (
        f"Seed-to-voxel maps were computed per run {which}: each seed-to-voxel map is the "
        "Pearson correlation r of the seed's cleaned signal with the signal of every voxel "
        f"of the brain mask ({mask}), each voxel cleaned identically (the same smoothing, "
        "detrending, filter, confound regression, censoring and standardization as the "
        "sphere signals, in the same pass), and its Fisher z = arctanh(r) "
        "(`_stat-r_` and `_stat-fisherz_` boldmap files). At the group level, each "
        "participant's Fisher z maps are averaged over its runs, then over participants "
        "(`_stat-effect_` statmap), and the one-sample t map is mean / (sd / sqrt(n)) with "
        "the sample standard deviation and n - 1 degrees of freedom (`_stat-t_` statmap), "
        "over the voxels every participant's mask holds."
    )


def _version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        return "(version unknown)"


def _seed_doi(seed_set: Any) -> str | None:
    citation = seed_set.citation or ""
    match = re.search(r"doi:\s*(10\.\S+?)\.?(?:\s|$)", citation)
    return match[1] if match else None


def _confound_paragraphs(text: Methods, config: RunConfig, strategy: Any) -> list[str]:
    description = strategy.description or ""
    for phrase, key in _CITED_IN_DESCRIPTIONS.items():
        if phrase in description:  # the description cites it already: list the reference
            text.cite(key)
    regressors = _regressor_list(text, strategy)
    first = (
        "Confounds were taken from fMRIPrep's confounds file (desc-confounds_timeseries.tsv) "
        f"with the `{strategy.name}` strategy: {description}"
    )
    if not first.endswith("."):
        first += "."
    if regressors:
        first += f" The regressors were {regressors}"
        first += ", each demeaned over the kept volumes." if strategy.demean else ", not demeaned."
    else:
        first += " No confound was regressed."
    nonsteady = (
        "Volumes flagged by fMRIPrep as non-steady-state (non_steady_state_outlier columns)"
        + (
            f" and the first {config.dummy_scans} volumes (--dummy-scans)"
            if config.dummy_scans
            else ""
        )
        + " were dropped."
    )
    fd_thr = config.fd_threshold if config.fd_threshold is not None else strategy.fd_threshold
    dvars_thr = (
        config.dvars_threshold
        if config.dvars_threshold is not None
        else strategy.std_dvars_threshold
    )
    motion = (
        "Framewise displacement (FD) is fMRIPrep's `framewise_displacement` column "
        f"(Power's definition {text.cite('power2012')}) and DVARS its standardized "
        f"`std_dvars` column {text.cite('nichols2017')}."
    )
    if strategy.scrubs:
        rules = []
        if fd_thr is not None:
            rules.append(f"FD > {fd_thr:g} mm")
        if dvars_thr is not None:
            rules.append(f"standardized DVARS > {dvars_thr:g}")
        segment = (
            f", and kept segments shorter than {strategy.scrub} volumes were censored too"
            if strategy.scrub
            else ""
        )
        scrubbing = (
            f"Volumes with {' or '.join(rules)} were censored (scrubbing "
            f"{text.cite('power2014')}){segment}; censored volumes are not in the timeseries "
            "(the run sidecar lists the kept ones)."
        )
    else:
        scrubbing = "No volume was censored for motion (no scrubbing)."
    return [first, f"{nonsteady} {motion} {scrubbing} Mean and maximum FD are reported per run."]


def _regressor_list(text: Methods, strategy: Any) -> str:
    items = []
    if strategy.high_pass:
        items.append("fMRIPrep's discrete cosine basis regressors (`cosine*`, a high-pass filter)")
    if strategy.motion:
        count = 6 * _MODEL_COUNT[strategy.motion]
        items.append(
            f"{count} motion terms (the 6 rigid-body parameters{_MODEL_TERMS[strategy.motion]})"
        )
    if strategy.wm_csf:
        count = 2 * _MODEL_COUNT[strategy.wm_csf]
        items.append(
            f"{count} white-matter and CSF terms (their mean signals"
            f"{_MODEL_TERMS[strategy.wm_csf]})"
        )
    if strategy.global_signal:
        count = _MODEL_COUNT[strategy.global_signal]
        items.append(
            f"{count} global-signal term{'s' if count > 1 else ''} (the mean signal"
            f"{_MODEL_TERMS[strategy.global_signal]})"
        )
    if strategy.compcor:
        if strategy.compcor_variance is not None:
            how = (
                f"the first components explaining {strategy.compcor_variance:.0%} of the variance"
            )
        elif strategy.n_compcor == "all":
            how = "all components fMRIPrep retained"
        else:
            how = f"the first {strategy.n_compcor} components"
        items.append(f"{how} of the {_COMPCOR_TEXT[strategy.compcor]} {text.cite('behzadi2007')}")
    if strategy.ica_aroma == "basic":
        items.append(
            f"the ICA-AROMA motion components (`aroma_motion_*`) {text.cite('pruim2015')}"
        )
    if strategy.ica_aroma == "full":
        items.insert(
            0,
            "(from fMRIPrep's ICA-AROMA non-aggressively denoised BOLD, "
            f"desc-smoothAROMAnonaggr {text.cite('pruim2015')})",
        )
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cleaning_paragraphs(text: Methods, config: RunConfig) -> list[str]:
    steps = []
    if config.detrend:
        steps.append("the sphere signals and the confounds were linearly detrended")
    if config.high_pass is not None or config.low_pass is not None:
        if config.high_pass is not None and config.low_pass is not None:
            band = f"band-pass ({config.high_pass:g}-{config.low_pass:g} Hz)"
        elif config.high_pass is not None:
            band = f"high-pass ({config.high_pass:g} Hz)"
        else:
            band = f"low-pass ({config.low_pass:g} Hz)"
        steps.append(
            f"both were {band} filtered with a Butterworth filter of order {FILTER_ORDER} "
            "(scipy.signal.butter, second-order sections) applied forward and backward "
            "(scipy.signal.sosfiltfilt: zero phase, twice the attenuation); the confounds "
            "were filtered too so that the regression removes no frequency the signals no "
            "longer have, and censored volumes were replaced by a cubic-spline "
            "interpolation of the kept volumes before filtering and removed after"
        )
    else:
        steps.append("no temporal filter was applied beyond the strategy's regressors")
    steps.append(
        "the confounds (z-scored) were regressed out of the signals by orthogonal "
        "projection onto their column space"
    )
    standardize = {
        "zscore_sample": "each timeseries was z-scored (mean 0, sample standard deviation 1)",
        "zscore": "each timeseries was z-scored (mean 0, population standard deviation 1)",
        "psc": "each timeseries was expressed in percent signal change of its mean",
    }.get(config.standardize or "", "the timeseries were not standardized")
    steps.append(standardize)
    order = "; then ".join(steps)
    return [
        f"Cleaning followed the order of nilearn's signal.clean {text.cite('abraham2014')}: "
        f"{order}.",
    ]


def _software_paragraph(text: Methods, versions: dict[str, str]) -> str:
    def version(name: str) -> str:
        return versions.get(name, "?")

    return (
        f"bids_spheres {version('bids_spheres')} ran on Python {version('python')} with "
        f"NumPy {version('numpy')} {text.cite('harris2020')}, SciPy {version('scipy')} "
        f"{text.cite('virtanen2020')}, NiBabel {version('nibabel')} {text.cite('nibabel')}, "
        f"PyBIDS {version('pybids')} {text.cite('yarkoni2019')}, pandas {version('pandas')} "
        f"{text.cite('pandas')} and isal {version('isal')} (gzip decompression)."
    )
