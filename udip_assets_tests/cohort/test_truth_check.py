"""Scoring loci against planted truth."""

import pandas as pd
import pytest

from udip_assets.cohort.truth_check import score_loci

TRUTH = pd.DataFrame({"snp": ["a", "b", "c"], "chrom": [2, 2, 6], "pos_bp": [1_000_000, 5_000_000, 3_000_000],
                      "detectable": [True, True, False]})


def test_span_rule_for_recall_and_near_rule_for_precision():
    loci = pd.DataFrame({"chr": [2, 2, 6, 11], "start": [900_000, 5_100_000, 2_000_000, 100],
                         "end": [1_100_000, 5_200_000, 2_900_000, 200]})
    score = score_loci(loci, TRUTH)
    # a is spanned; b lies 100 kb before its locus (not found, but that locus is near a planted SNP);
    # c's locus ends 100 kb short; chr11's locus has no planted SNP.
    assert score.found == ("a",) and score.missed == ("b",)
    assert score.recall == pytest.approx(0.5)
    assert score.n_true_loci == 3 and score.precision == pytest.approx(0.75)


def test_no_loci():
    score = score_loci(pd.DataFrame(columns=["chr", "start", "end"]), TRUTH)
    assert score.recall == 0 and score.n_loci == 0


def test_true_region_phenotypes_take_the_last_visit_and_drop_constant_columns(tmp_path):
    import json

    from udip_assets.cohort.truth_check import true_region_phenotypes

    def morph(vol, stretch):
        return json.dumps({"head_scale": 1.0, "region_log_volume": {"thalamus": vol, "caudate": 0.0},
                           "region_stretch": {"ventricles": stretch}})

    path = tmp_path / "truth_subjects.csv"
    pd.DataFrame({"eid": ["7", "7", "9", "11"], "visit": [3, 2, 2, 2], "subject_seed": 0, "population": 0,
                  "morphology": [morph(0.3, 0.1), morph(-0.5, 0.0), morph(0.1, -0.2), morph(-0.1, 0.05)]}
                 ).to_csv(path, index=False)
    out = true_region_phenotypes(path)
    assert list(out.columns) == ["vol_thalamus", "stretch_ventricles"]  # caudate is constant
    assert out.loc["7", "vol_thalamus"] == pytest.approx(0.3) and sorted(out.index) == ["11", "7", "9"]


def test_true_region_phenotypes_refuse_another_file(tmp_path):
    from udip_assets.cohort.truth_check import true_region_phenotypes

    path = tmp_path / "x.csv"
    pd.DataFrame({"eid": [1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="truth_subjects.csv"):
        true_region_phenotypes(path)
