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
