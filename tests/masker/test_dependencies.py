"""What the masker library imports: its declared dependencies only, and nothing of the app."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np

MASKER_DIR = Path(__file__).resolve().parents[2] / "bids_spheres" / "masker"

#: The masker's own dependencies (pyproject.toml).
DEPENDENCIES = {"bids_spheres", "numpy", "scipy", "nibabel", "isal", "joblib"}

#: Top-level modules that those dependencies import themselves (none is imported by
#: bids_spheres.masker): each name, and who brings it in.
DEPENDENCIES_OWN_IMPORTS = {
    "packaging": "nibabel (nibabel.info: version parsing)",
    "typing_extensions": "nibabel (nibabel._typing)",
    "charset_normalizer": "numpy.f2py (optional), imported by scipy's array-API layer",
    "cython_runtime": "Cython's runtime module, created by scipy's compiled extensions",
}
#: Cython's shared runtime modules (one per Cython version: ``_cython_3_2_4`` ...).
CYTHON_RUNTIME_PREFIX = "_cython_"

FORBIDDEN = {"pandas", "polars", "bids", "matplotlib", "sklearn", "nilearn"}

#: Optional libraries the masker may import INSIDE a function, only when asked for them:
#: each name, and what needs it. Never at module level, so never on import, fit or transform.
OPTIONAL_LAZY = {
    "sklearn": "base.masker_tags: scikit-learn's Tags, only if the caller imported sklearn",
    "pandas": "base.wrap_output: set_output(transform='pandas')",
    "polars": "base.wrap_output: set_output(transform='polars')",
    "matplotlib": "report: generate_report()'s figures",
}

_CHILD = textwrap.dedent(
    """
    import json, sys
    before = set(sys.modules)
    import numpy as np
    import bids_spheres.masker as masker_lib

    path, n_vol = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    masker = masker_lib.NiftiSpheresMasker(
        [[8.0, 8.0, 8.0], [14.0, 12.0, 10.0]], radius=4.0, smoothing_fwhm=4.0,
        detrend=True, low_pass=0.1, high_pass=0.01, t_r=2.0, standardize="zscore_sample",
    )
    # confounds as a TSV file with a header, the way users pass fMRIPrep's
    rows = ["a\\tb\\tc"] + ["\\t".join(map(str, r)) for r in rng.normal(size=(n_vol, 3))]
    confounds_path = path + ".tsv"
    with open(confounds_path, "w") as fh:
        fh.write("\\n".join(rows) + "\\n")
    out = masker.fit_transform(path, confounds=confounds_path, sample_mask=np.arange(2, n_vol))
    assert out.shape == (n_vol - 2, 2) and np.isfinite(out).all()
    tops = {}
    for name in set(sys.modules) - before:
        module = sys.modules[name]
        if "." not in name:
            # compiled submodules may also register under their short name (scipy.
            # sparse's _csparsetools as "_csparsetools"); their __name__ is the full one
            name = getattr(module, "__name__", None) or name
        tops[name.split(".")[0]] = getattr(module, "__file__", None)
    print(json.dumps(tops))
    """
)


def _stdlib_file(path: str | None) -> bool:
    """A module file of the standard library itself (e.g. ``_sysconfigdata_*``)."""
    import sysconfig

    return (
        path is not None
        and "site-packages" not in path
        and (
            path.startswith(sysconfig.get_paths()["stdlib"])
            or path.startswith(sysconfig.get_paths()["platstdlib"])
        )
    )


def test_masker_imports_only_its_dependencies(tmp_path: Path) -> None:
    """fit_transform of a .nii.gz with smoothing, a band-pass, a confounds TSV file and a
    sample_mask, in a fresh process: every top-level package it imports is a
    declared dependency or one those import themselves."""
    n_vol = 60
    data = np.random.default_rng(1).normal(100, 5, size=(12, 12, 12, n_vol))
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(n_vol)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    third_party = {
        name
        for name, file in imported.items()
        if name not in sys.stdlib_module_names and not _stdlib_file(file)
    }
    assert not third_party & FORBIDDEN
    assert {"bids_spheres", "numpy", "scipy", "nibabel", "isal"} <= third_party
    unexpected = {
        name
        for name in third_party - DEPENDENCIES - set(DEPENDENCIES_OWN_IMPORTS)
        if not name.startswith(CYTHON_RUNTIME_PREFIX)
    }
    assert not unexpected, f"the masker pulled in {sorted(unexpected)}"


def _imported_names(path: Path, *, module_level_only: bool = False) -> list[str]:
    """Every module named by an import statement of a source file (also inside functions,
    unless ``module_level_only``: then only statements outside any function body)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = list(ast.walk(tree))
    if module_level_only:
        in_functions = {
            id(inner)
            for fn in nodes
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for inner in ast.walk(fn)
        }
        nodes = [n for n in nodes if id(n) not in in_functions]
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against bids_spheres.masker
                base = "bids_spheres.masker" if node.level == 1 else "bids_spheres"
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append(module)
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_masker_module_imports_the_app() -> None:
    sources = sorted(MASKER_DIR.glob("*.py"))
    assert {p.name for p in sources} >= {"estimator.py", "geometry.py", "reading.py"}
    offending = {
        p.name: [n for n in _imported_names(p) if n.startswith("bids_spheres.app")]
        for p in sources
    }
    assert not {k: v for k, v in offending.items() if v}


def test_masker_sources_import_only_the_stdlib_and_its_dependencies() -> None:
    """Every import statement of bids_spheres/masker (function-local ones included) names
    the standard library, a declared dependency or the masker itself, except the optional
    libraries of OPTIONAL_LAZY, which may be imported only inside a function body: a lazy
    ``import pandas`` in a rarely used branch that is not listed is caught here, not by a
    user, and so is a module-level import of an optional library."""
    found, module_level = {}, {}
    for path in sorted(MASKER_DIR.glob("*.py")):
        tops = {name.split(".")[0] for name in _imported_names(path) if name}
        other = {
            top
            for top in tops - DEPENDENCIES - set(OPTIONAL_LAZY)
            if top not in sys.stdlib_module_names and top != "__future__"
        }
        if other:
            found[path.name] = sorted(other)
        eager = {n.split(".")[0] for n in _imported_names(path, module_level_only=True) if n}
        if eager & set(OPTIONAL_LAZY):
            module_level[path.name] = sorted(eager & set(OPTIONAL_LAZY))
    assert not found, f"masker modules import {found}"
    assert not module_level, f"optional libraries imported at module level: {module_level}"


def test_the_lazy_import_rule_sees_module_level_imports(tmp_path: Path) -> None:
    """A guard for the test above: a module-level ``import pandas`` is found, one inside a
    function is not counted as module level."""
    source = tmp_path / "example.py"
    source.write_text("import pandas\n\ndef f():\n    import polars\n")
    assert {"pandas", "polars"} <= set(_imported_names(source))
    assert _imported_names(source, module_level_only=True) == ["pandas"]
