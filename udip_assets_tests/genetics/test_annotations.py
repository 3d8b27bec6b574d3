"""Annotation inputs: gene tables (TSV and BED), reference loci, GWAS Catalog exports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from udip_assets.errors import CohortSpecError
from udip_assets.genetics.annotations import (
    CATALOG_COLUMNS,
    demo_gwas_catalog,
    read_gene_table,
    read_gwas_catalog,
    read_reference_loci,
    reference_loci_from_truth,
)


def test_gene_table_tsv_and_bed_agree(tmp_path):
    tsv = tmp_path / "genes.tsv"
    tsv.write_text("name\tchrom\tstart\tend\nAPOE\tchr19\t45409011\t45412650\nKANSL1\t17\t44107282\t44302733\n")
    bed = tmp_path / "genes.bed"
    bed.write_text("chr19\t45409010\t45412650\tAPOE\n17\t44107281\t44302733\tKANSL1\n")
    a, b = read_gene_table(tsv, build="GRCh37"), read_gene_table(bed, build="GRCh37")
    pd.testing.assert_frame_equal(a, b)
    assert a["chrom"].tolist() == ["19", "17"] and a["start_bp"].tolist() == [45409011, 44107282]


@pytest.mark.parametrize("text, message", [
    ("name\tchrom\tbegin\tend\nX\t1\t5\t9\n", "lacks column(s) ['start']"),
    ("name\tchrom\tstart\tend\nX\t1\tfive\t9\n", "column 'start' holds 1 non-integer value(s), e.g. ['five']"),
    ("name\tchrom\tstart\tend\nX\t1\t90\t9\n", "1 gene(s) end before they start, e.g. ['X']"),
])
def test_gene_table_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "g.tsv"
    path.write_text(text)
    with pytest.raises(CohortSpecError) as err:
        read_gene_table(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_reference_loci_and_truth(tmp_path):
    path = tmp_path / "ref.tsv"
    path.write_text("snp\tchrom\tpos_bp\ttrait\nrs1\t2\t100\tbrain volume\nrs1\t2\t100\tbrain volume\n")
    ref = read_reference_loci(path, source="smith2020")
    assert ref.to_dict("records") == [{"source": "smith2020", "snp": "rs1", "chrom": "2", "pos_bp": 100,
                                       "trait": "brain volume"}]
    truth = pd.DataFrame({"snp": ["a", "b"], "chrom": [2, 6], "pos_bp": [5, 7], "region": ["thalamus", "caudate"],
                          "kind": ["volume", "shape"], "reported": [True, False]})
    assert reference_loci_from_truth(truth)["snp"].tolist() == ["a"]


def test_catalog_round_trip_of_demo_file(tmp_path):
    truth = pd.DataFrame({"snp": ["rsA", "rsB"], "chrom": [2, 2], "pos_bp": [1_000_000, 3_000_000],
                          "region": ["thalamus", "caudate"], "kind": ["volume", "volume"], "reported": [True, False]})
    variants = pd.DataFrame({"snp": [f"rs{i}" for i in range(100)], "chrom": ["2"] * 100,
                             "pos_bp": np.arange(100) * 40_000})
    genes = pd.DataFrame({"name": ["G1", "G2"], "chrom": [2, 2], "start": [900_000, 2_900_000],
                          "end": [1_100_000, 3_100_000]})
    cat = demo_gwas_catalog(truth, variants, genes, np.random.default_rng(0), n_other=10)
    assert tuple(cat.columns) == CATALOG_COLUMNS
    brain = cat[cat["SNPS"] == "rsA"]
    assert len(brain) == 1 and brain["MAPPED_GENE"].item() == "G1"
    path = tmp_path / "catalog.tsv"
    cat.to_csv(path, sep="\t", index=False)
    back = read_gwas_catalog(path)
    assert back["row_id"].tolist() == list(range(1, len(cat) + 1))
    assert back["DISEASE/TRAIT"].tolist() == cat["DISEASE/TRAIT"].tolist()


def test_catalog_missing_required_column(tmp_path):
    path = tmp_path / "catalog.tsv"
    path.write_text("SNPS\tCHR_ID\tDISEASE/TRAIT\nrs1\t1\tHeight\n")
    with pytest.raises(CohortSpecError, match=r"lacks column\(s\) \['CHR_POS'\]"):
        read_gwas_catalog(path)
