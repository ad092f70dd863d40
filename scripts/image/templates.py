"""The TemplateFlow templates of the bids_spheres images, fetched and checked by sha256.

Usage (the Dockerfile and apptainer.def run ``fetch``; scripts/build-image.sh runs
``verify`` on a --templateflow-home and ``record`` for --record-template-sums)::

    python templates.py fetch  TEMPLATEFLOW_HOME MANIFEST   # download, then verify
    python templates.py verify TEMPLATEFLOW_HOME MANIFEST   # every listed file matches
    python templates.py record TEMPLATEFLOW_HOME MANIFEST   # write the sums of a home

MANIFEST (``templates.sha256``) has one line per template, ``<sha256>  <path>``, the path
relative to TEMPLATEFLOW_HOME and named as TemplateFlow names it
(``tpl-<T>/tpl-<T>_res-<NN>[_desc-<D>]_<suffix>.nii.gz``). A file that is missing, or whose
sha256 differs from the manifest, or a manifest line whose sha256 was never recorded
(``UNRECORDED``), fails with exit code 1 and one line per file naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

NAME = re.compile(
    r"tpl-(?P<template>[A-Za-z0-9]+)/tpl-(?P=template)_res-(?P<res>\d+)"
    r"(?:_desc-(?P<desc>[A-Za-z0-9]+))?_(?P<suffix>[A-Za-z0-9]+)\.nii\.gz"
)
UNRECORDED = "UNRECORDED"


def read_manifest(path: Path) -> list[tuple[str, str]]:
    """(sha256 or UNRECORDED, relative path) pairs of the manifest."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        if not (re.fullmatch(r"[0-9a-f]{64}", digest) or digest == UNRECORDED):
            raise SystemExit(f"{path}:{number}: not '<sha256>  <path>': {line!r}")
        if not NAME.fullmatch(name):
            raise SystemExit(f"{path}:{number}: {name!r} is not a TemplateFlow file name")
        entries.append((digest, name))
    return entries


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(home: Path, entries: list[tuple[str, str]]) -> None:
    """Download every template of the manifest into ``home`` with templateflow.api.get."""
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    from templateflow import api

    for _, name in entries:
        parts = NAME.fullmatch(name).groupdict()
        got = api.get(
            parts["template"],
            resolution=int(parts["res"]),
            desc=parts["desc"],
            suffix=parts["suffix"],
            extension=".nii.gz",
        )
        print(got)


def verify(home: Path, entries: list[tuple[str, str]]) -> list[str]:
    """One message per template that is missing or does not match; [] when all match."""
    bad = []
    for digest, name in entries:
        path = home / name
        if not path.is_file():
            bad.append(f"{path}: missing")
        elif digest == UNRECORDED:
            bad.append(
                f"{path}: no sha256 recorded in the manifest (scripts/build-image.sh "
                "--record-template-sums DIR, from a TemplateFlow home you trust)"
            )
        elif (got := sha256(path)) != digest:
            bad.append(f"{path}: sha256 {got}, expected {digest}")
    return bad


def record(home: Path, manifest: Path, entries: list[tuple[str, str]]) -> None:
    """Rewrite the manifest with the sha256 of each template found in ``home``."""
    lines = [
        line for line in manifest.read_text(encoding="utf-8").splitlines() if line.startswith("#")
    ]
    for _, name in entries:
        path = home / name
        if not path.is_file():
            raise SystemExit(f"{path}: missing; cannot record its sha256")
        lines.append(f"{sha256(path)}  {name}")
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("fetch", "verify", "record"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 64
    mode, home, manifest = argv[0], Path(argv[1]), Path(argv[2])
    entries = read_manifest(manifest)
    if mode == "record":
        record(home, manifest, entries)
        return 0
    if mode == "fetch":
        fetch(home, entries)
    bad = verify(home, entries)
    for message in bad:
        print(f"TemplateFlow template check failed: {message}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
