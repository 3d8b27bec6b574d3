"""The dbt annotation project on a hand-built warehouse: genes, catalog traits, novelty, dims.

Runs the real project with dbt-duckdb (``dbt build``: seeds, models and their tests) against a
temporary warehouse whose loci are placed so that each novelty rule is exercised once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from udip_assets.defs.dbt_project import DBT_PROJECT_DIR
from udip_assets.store.schema import GENES, GENOMIC_RISK_LOCI, GWAS_CATALOG, LEAD_SNPS, REFERENCE_LOCI
from udip_assets.store.warehouse import read_frame, write_partition

PART = {"cohort": "c", "model_id": "m"}


def _locus(n: int, chrom: str, start: int, end: int, top: str, dims: str, leads: str | None = None) -> dict:
    return {"GenomicLocus": n, "uniqID": f"{chrom}:{start}", "rsID": top, "chr": chrom, "pos": (start + end) // 2,
            "p": 1e-12, "start": start, "end": end, "nSNPs": 5, "nGWASSNPs": 5, "nIndSigSNPs": 1,
            "IndSigSNPs": top, "nLeadSNPs": 1, "LeadSNPs": leads or top, "dim": int(dims.split(";")[0]),
            "dims": dims}


def _dbt_build(db: Path, target: Path, cohort: str | None = None) -> subprocess.CompletedProcess:
    """``dbt build`` in a subprocess, as dagster-dbt runs it (dbt-duckdb keeps its connection open in-process)."""
    extra = ["--vars", json.dumps({"cohort": cohort})] if cohort else []
    return subprocess.run([str(Path(sys.executable).parent / "dbt"), "build", "--project-dir", str(DBT_PROJECT_DIR),
                           "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(target), *extra],
                          env={**os.environ, "UDIP_WAREHOUSE": str(db)}, capture_output=True, text=True, timeout=300)


def seed_annotation_inputs(db: Path) -> None:
    """The hand-built loci, lead SNPs, genes, reference loci and catalog rows of cohort 'c'."""
    loci = pd.DataFrame([
        _locus(1, "2", 1_000_000, 1_100_000, "rsNear", "3;7"),      # reference SNP 200 kb right of the end
        _locus(2, "2", 5_000_000, 5_050_000, "rsNovel", "12"),      # only a non-brain catalog trait inside
        _locus(3, "6", 2_000_000, 2_020_000, "rsBrain", "5"),       # brain catalog hit 240 kb left of start
        _locus(4, "6", 8_000_000, 8_010_000, "rsFar", "9;10;11"),   # reference 260 kb away: still novel
        _locus(5, "11", 300_000, 310_000, "rs13107325", "45"),      # a lead SNP of the paper's Table 2
    ])
    write_partition(db, GENOMIC_RISK_LOCI, loci.assign(**PART), PART)
    write_partition(db, LEAD_SNPS, loci[["GenomicLocus", "uniqID", "rsID", "chr", "pos", "p", "dim"]]
                    .assign(No=loci["GenomicLocus"], **PART), PART)
    genes = pd.DataFrame({"name": ["GA", "GB", "GC"], "chrom": ["2", "2", "6"], "start_bp": [1_050_000, 5_200_000, 1],
                          "end_bp": [1_060_000, 5_300_000, 2]})
    write_partition(db, GENES, genes.assign(cohort="c"), {"cohort": "c"})
    refs = pd.DataFrame({"source": "s", "snp": ["r1", "r2"], "chrom": ["2", "6"], "pos_bp": [1_300_000, 8_270_000]})
    write_partition(db, REFERENCE_LOCI, refs.assign(cohort="c"), {"cohort": "c"})
    catalog = pd.DataFrame({"row_id": [1, 2, 3], "SNPS": ["x1", "x2", "x3"], "CHR_ID": ["2", "6", "6"],
                            "CHR_POS": ["5010000", "1760000", ""], "DISEASE/TRAIT": ["Height", "Brain region volumes",
                                                                                    "Subcortical volume"]})
    write_partition(db, GWAS_CATALOG, catalog.assign(cohort="c"), {"cohort": "c"})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    db = tmp_path_factory.mktemp("dbt") / "warehouse.duckdb"
    seed_annotation_inputs(db)
    target = db.parent / "target"
    proc = _dbt_build(db, target)
    results = json.loads((target / "run_results.json").read_text())["results"]
    # model.<project>.<name>, test.<project>.<name>.<hash>, unit_test.<project>.<model>.<name>
    return db, proc, {r["unique_id"].split(".")[3 if r["unique_id"].startswith("unit_test.") else 2]: r["status"]
                      for r in results}


def test_build_and_tests_pass(built):
    _, proc, statuses = built
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert statuses["loci_annotated"] == "success" and statuses["novel_loci"] == "success"
    tests = {name: s for name, s in statuses.items() if name.startswith(("unique_", "not_null_", "relationships_"))}
    assert len(tests) >= 10 and set(tests.values()) == {"pass"}


def test_dbt_unit_tests_of_the_novelty_rule_pass(built):
    """The project's own unit tests (models/marts/schema.yml): the 250 kb flank at 250,000 vs 250,001 bp,
    chromosome and cohort, brain vs other traits, and the paper's Table 2 lead SNPs."""
    _, _, statuses = built
    assert statuses["novel_loci_flank_is_250kb_either_side"] == "pass"
    assert statuses["novel_loci_a_table2_lead_snp_is_known"] == "pass"


def test_novelty_follows_the_250kb_rule(built):
    db, *_ = built
    novel = read_frame(db, "SELECT locus FROM novel_loci ORDER BY locus")["locus"].tolist()
    # 1: reference 200 kb away; 3: brain-structure catalog hit 240 kb away; 5: paper Table 2 lead SNP.
    assert novel == [2, 4]


def test_genes_and_catalog_traits(built):
    db, *_ = built
    ann = read_frame(db, "SELECT locus, overlapping_genes, nearest_gene, n_catalog_hits, catalog_traits "
                         "FROM loci_annotated ORDER BY locus").set_index("locus")
    assert ann.at[1, "overlapping_genes"] == "GA" and ann.at[1, "nearest_gene"] == "GA"
    assert pd.isna(ann.at[2, "overlapping_genes"]) and ann.at[2, "nearest_gene"] == "GB"
    assert ann.at[2, "n_catalog_hits"] == 1 and ann.at[2, "catalog_traits"] == "Height"
    assert ann.at[3, "n_catalog_hits"] == 0  # the brain hit lies outside the locus itself


def test_loci_by_dim_explodes_dims(built):
    db, *_ = built
    rows = read_frame(db, "SELECT locus, dim FROM loci_by_dim ORDER BY locus, dim")
    assert rows.groupby("locus")["dim"].apply(list).to_dict() == {1: [3, 7], 2: [12], 3: [5], 4: [9, 10, 11],
                                                                 5: [45]}


def test_a_cohort_build_replaces_that_cohorts_rows_only(built, tmp_path):
    """The dbt var ``cohort`` (the Dagster partition): another cohort's rows stay; a locus gone from a
    re-run of this cohort is gone from the marts too."""
    import shutil

    db = tmp_path / "warehouse.duckdb"
    shutil.copy(built[0], db)
    other = {"cohort": "d", "model_id": "m"}
    write_partition(db, GENOMIC_RISK_LOCI, pd.DataFrame([_locus(1, "2", 7_000_000, 7_010_000, "rsD", "4")])
                    .assign(**other), other)
    assert _dbt_build(db, tmp_path / "t1", cohort="d").returncode == 0
    counts = read_frame(db, "SELECT cohort, count(*) AS n FROM loci_annotated GROUP BY 1 ORDER BY 1")
    assert dict(zip(counts["cohort"], counts["n"], strict=True)) == {"c": 5, "d": 1}
    loci = read_frame(db, "SELECT * FROM genomic_risk_loci WHERE cohort = 'c' AND \"GenomicLocus\" <> 2")
    write_partition(db, GENOMIC_RISK_LOCI, loci, PART)
    proc = _dbt_build(db, tmp_path / "t2", cohort="c")
    assert proc.returncode == 0, proc.stdout[-3000:]
    annotated = read_frame(db, "SELECT cohort, locus FROM loci_annotated ORDER BY 1, 2")
    assert annotated.groupby("cohort")["locus"].apply(list).to_dict() == {"c": [1, 3, 4, 5], "d": [1]}
    assert read_frame(db, "SELECT locus FROM novel_loci WHERE cohort = 'c' ORDER BY 1")["locus"].tolist() == [4]
    assert read_frame(db, "SELECT count(*) AS n FROM novel_loci WHERE cohort = 'd'")["n"].item() == 1


MARTS = ("loci_annotated", "novel_loci", "loci_by_dim")


def _marts(db: Path) -> dict[str, pd.DataFrame]:
    return {m: read_frame(db, f"SELECT * FROM {m} ORDER BY ALL").reset_index(drop=True) for m in MARTS}


@pytest.mark.parametrize("kill_at", [1, 2])
def test_sigkill_mid_build_then_a_rebuild_gives_the_marts_of_an_uninterrupted_build(built, tmp_path, kill_at):
    """``dbt build`` killed with SIGKILL as its first (or second: one mart replaced, the others not)
    incremental mart starts; no handler runs. The next build leaves exactly the marts of a build
    that was never interrupted, no duplicate and no missing row."""
    import shutil
    import signal

    db = tmp_path / "warehouse.duckdb"
    shutil.copy(built[0], db)
    loci = read_frame(db, "SELECT * FROM genomic_risk_loci WHERE cohort = 'c' AND \"GenomicLocus\" <> 2")
    write_partition(db, GENOMIC_RISK_LOCI, loci, PART)
    reference = tmp_path / "reference.duckdb"
    shutil.copy(db, reference)
    assert _dbt_build(reference, tmp_path / "t-ref", cohort="c").returncode == 0
    want = _marts(reference)
    assert len(want["loci_annotated"]) == 4  # the build did change the marts (locus 2 is gone)

    cmd = [str(Path(sys.executable).parent / "dbt"), "build", "--project-dir", str(DBT_PROJECT_DIR),
           "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(tmp_path / "t-kill"),
           "--vars", json.dumps({"cohort": "c"})]
    victim = subprocess.Popen(cmd, env={**os.environ, "UDIP_WAREHOUSE": str(db)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    seen, started = [], 0
    for line in victim.stdout:
        seen.append(line)
        started += "START sql incremental model" in line
        if started == kill_at:
            break
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    proc = _dbt_build(db, tmp_path / "t-rerun", cohort="c")
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = _marts(db)
    for mart in MARTS:
        pd.testing.assert_frame_equal(got[mart], want[mart], check_dtype=False, obj=mart)
