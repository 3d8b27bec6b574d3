"""Model selection by loci count, and the patience rule."""

from __future__ import annotations

import pytest

from udip_assets.cohort.model_selection import SweepPoint, patience_stop, select_by_loci
from udip_assets.errors import UdipConfigError


def _points(counts: dict[int, int]) -> list[SweepPoint]:
    return [SweepPoint(e, f"m-e{e:04d}", n) for e, n in counts.items()]


def test_most_loci_wins_and_ties_go_earlier():
    pts = _points({10: 3, 20: 7, 30: 7, 40: 5})
    assert select_by_loci(pts).epoch == 20
    pts.append(SweepPoint(30, "m-e0030b", 7, n_significant_snps=50))
    assert select_by_loci(pts).model_id == "m-e0030b"


def test_patience_rule():
    counts = {10: 1, 20: 4, 30: 4, 40: 3, 50: 4, 60: 2, 70: 9}
    assert patience_stop(_points(counts), patience_epochs=30) == 50  # last gain at 20; 50 - 20 >= 30
    assert patience_stop(_points(counts), patience_epochs=100) is None
    assert patience_stop(_points({10: 0, 20: 0}), patience_epochs=10) == 20


def test_errors():
    with pytest.raises(UdipConfigError, match="no checkpoints were evaluated"):
        select_by_loci([])
    with pytest.raises(UdipConfigError, match="patience_epochs must be >= 1, got 0"):
        patience_stop(_points({1: 1}), 0)


def test_the_sweeps_checkpoints_in_one_pass_find_the_loci_each_finds_alone(tiny_cohort):
    """loci_of_samples (one pass over the genotypes, one LD set-up) gives every sample the loci and the
    significant-SNP count that loci_of_sample gives it alone; on the tiny cohort's real PLINK fileset."""
    import numpy as np
    import pandas as pd

    from udip_assets.cohort.gwas_inputs import GwasSample
    from udip_assets.cohort.model_selection import loci_of_sample, loci_of_samples
    from udip_assets.genetics.clump import ClumpConfig
    from udip_assets.genetics.gwas import GwasConfig
    from udip_assets.genetics.plink import read_bim, read_dosage, read_fam

    prefix = tiny_cohort.genotypes
    iids = read_fam(prefix.with_name(prefix.name + ".fam"))["iid"].astype(str).tolist()
    bim = read_bim(prefix.with_name(prefix.name + ".bim"))
    rng = np.random.default_rng(0)
    dosage = read_dosage(prefix)  # (n, m)
    maf = np.nanmean(dosage, axis=0) / 2
    common = np.flatnonzero((maf > 0.2) & (maf < 0.8) & ~np.isnan(dosage).any(axis=0))
    causal = {"early": common[[10, len(common) // 2]], "late": common[[len(common) // 3, -10]]}
    cov = pd.DataFrame({"age": rng.normal(60, 7, len(iids))}, index=iids)
    samples = {}
    for name, snps in causal.items():
        y = rng.standard_normal((len(iids), 4))
        y[:, 0] += 2.0 * dosage[:, snps[0]]
        y[:, 2] += 2.0 * dosage[:, snps[1]]
        samples[name] = GwasSample(pd.DataFrame(y, index=iids, columns=[f"udip_{d:03d}" for d in range(4)]), cov, {})
    gwas, clump = GwasConfig(), ClumpConfig(sig_p=5e-8 / 4)
    together = loci_of_samples(samples, prefix, gwas, clump)
    for name, sample in samples.items():
        loci, n_sig = loci_of_sample(sample, prefix, gwas, clump)
        got_loci, got_sig = together[name]
        assert len(loci) >= 1 and got_sig == n_sig
        pd.testing.assert_frame_equal(got_loci.reset_index(drop=True), loci.reset_index(drop=True), rtol=1e-4)
        assert set(bim["snp"].iloc[causal[name]]) & set(loci["rsID"])  # a planted SNP leads a locus
