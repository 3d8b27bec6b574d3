"""A cohort's input fingerprint: one hash of what its files are now, for staleness.

``scan_manifest`` records it as its data version; the new-cohort sensor compares the cohort's
current fingerprint with the recorded one and ingests again when they differ, so new, removed or
rewritten scans, genotypes or covariates make the cohort's assets stale and re-run.

The hash covers ``cohort.yaml``'s content and, for every input file (each scan, the PLINK
fileset, the covariate, kinship and annotation tables), its path relative to the cohort folder,
size and modification time: a ``stat`` per file, no reading, so a 40,000-scan cohort costs a
directory walk, not 40,000 decompressions. Touching a file without changing it does change the
fingerprint (re-ingest is idempotent, so this costs time, never rows).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from udip_assets.cohort.spec import COHORT_FILE, CohortSpec, find_scans


def _input_files(spec: CohortSpec) -> list[Path]:
    files = [spec.root / COHORT_FILE, spec.covariates,
             *(spec.genotypes.with_name(spec.genotypes.name + ext) for ext in (".bed", ".bim", ".fam"))]
    files += [p for p in (spec.relatedness, spec.genes, spec.reference_loci, spec.gwas_catalog, spec.scans_manifest)
              if p is not None]
    files += [Path(p) for p in find_scans(spec)["path"]]
    return files


def cohort_fingerprint(spec: CohortSpec) -> str:
    """16 hex digits that change when any input file of the cohort is added, removed or rewritten."""
    digest = hashlib.sha256((spec.root / COHORT_FILE).read_bytes())
    for path in sorted(_input_files(spec)):
        try:
            st = os.stat(path)
            entry = f"{_rel(path, spec.root)}\t{st.st_size}\t{st.st_mtime_ns}\n"
        except FileNotFoundError:
            entry = f"{_rel(path, spec.root)}\tmissing\n"
        digest.update(entry.encode())
    return digest.hexdigest()[:16]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
