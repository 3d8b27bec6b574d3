"""FUMA clumping: hand-built LD blocks with known answers, filters, FUMA files, PLINK 1.9 --clump."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from udip_assets.errors import GenotypeError, UdipConfigError
from udip_assets.genetics.clump import (
    CANDIDATE_COLUMNS,
    FUMA_LOCI_COLUMNS,
    IND_SIG_COLUMNS,
    LEAD_COLUMNS,
    LOCI_COLUMNS,
    ClumpConfig,
    SummaryStatsError,
    clump_loci,
    read_fuma_loci,
    write_fuma_loci,
)
from udip_assets.genetics.ld import LDCalculator
from udip_assets.genetics.plink import write_plink
from udip_assets.genetics.synth_genotypes import GenotypeSimConfig, simulate_genotypes

PLINK = shutil.which("plink1.9")
N = 2000
SIG = 5e-8 / 128


def _random_snp(rng) -> np.ndarray:
    return rng.binomial(2, 0.5, N).astype(float)


def _with_r2(rng, base: np.ndarray, target: float) -> np.ndarray:
    """A copy of ``base`` whose r² with it is just below ``target``: the first k samples (in a
    random order) get fresh genotypes, k found by bisection (r² falls as k grows)."""
    order, fresh = rng.permutation(N), _random_snp(rng)

    def make(k):
        out = base.copy()
        out[order[:k]] = fresh[order[:k]]
        return out

    lo, hi = 0, N
    while lo < hi:
        mid = (lo + hi) // 2
        if np.corrcoef(base, make(mid))[0, 1] ** 2 <= target:
            hi = mid
        else:
            lo = mid + 1
    return make(lo)


class Panel:
    """A hand-built genotype fileset plus its minP table."""

    def __init__(self):
        self.cols, self.rows = [], []

    def add(self, name, chrom, pos, geno, p, dim=0, maf=None, in_gwas=True):
        self.cols.append((name, chrom, pos, geno))
        if in_gwas:
            f = geno.mean() / 2
            maf = min(f, 1 - f) if maf is None else maf
            self.rows.append({"snp": name, "chrom": chrom, "pos_bp": pos, "a1": "A", "a2": "G", "p": p,
                              "dim": dim, "beta": 0.1, "se": 0.01, "maf": maf})
        return geno

    def clump(self, tmp_path, cfg=None, method="genotype"):
        cols = sorted(self.cols, key=lambda c: (c[1], c[2]))
        variants = pd.DataFrame({"snp": [c[0] for c in cols], "chrom": [c[1] for c in cols],
                                 "pos_bp": [c[2] for c in cols], "a1": "A", "a2": "G"})
        write_plink(tmp_path / "panel", [f"s{i}" for i in range(N)], np.column_stack([c[3] for c in cols]),
                    variants)
        ld = LDCalculator(tmp_path / "panel", method=method)
        return clump_loci(pd.DataFrame(self.rows), ld, cfg or ClumpConfig(), progress=False), ld


def _r2(x, y):
    return np.corrcoef(x, y)[0, 1] ** 2


@pytest.mark.parametrize(("target", "n_ind", "n_lead"), [(0.7, 1, 1), (0.3, 2, 1), (0.05, 2, 2)])
def test_two_significant_snps_at_controlled_ld(tmp_path, target, n_ind, n_lead):
    rng = np.random.default_rng(7)
    panel = Panel()
    a = panel.add("rsA", 2, 1_000_000, _random_snp(rng), 1e-30)
    b = panel.add("rsB", 2, 1_100_000, _with_r2(rng, a, target), 1e-20)
    assert target - 0.02 < _r2(a, b) <= target
    res, _ = panel.clump(tmp_path)
    assert res.ind_sig_snps["rsID"].tolist() == ["rsA", "rsB"][:n_ind]
    assert res.lead_snps["rsID"].tolist() == ["rsA", "rsB"][:n_lead]
    assert len(res.loci) == 1  # blocks 100 kb apart merge whatever the LD
    locus = res.loci.iloc[0]
    assert (locus["rsID"], locus["nIndSigSNPs"], locus["nLeadSNPs"]) == ("rsA", n_ind, n_lead)
    assert (locus["start"], locus["end"], locus["nSNPs"]) == (1_000_000, 1_100_000, 2)
    if n_ind == 1:  # B is A's candidate SNP
        assert res.candidates.set_index("rsID").loc["rsB", "r2"] == pytest.approx(_r2(a, b), abs=1e-9)
        assert res.ind_sig_snps["nSNPs"].tolist() == [2]
    if (n_ind, n_lead) == (2, 1):
        assert res.lead_snps["IndSigSNPs"].tolist() == ["rsA;rsB"]
    assert res.loci["LeadSNPs"].iloc[0] == ";".join(["rsA", "rsB"][:n_lead])


@pytest.mark.parametrize(("gap_bp", "n_loci"), [(249_000, 1), (250_000, 2), (251_000, 2)])
def test_blocks_merge_when_closer_than_merge_distance(tmp_path, gap_bp, n_loci):
    rng = np.random.default_rng(11)
    panel = Panel()
    a = panel.add("rsA", 3, 1_000_000, _random_snp(rng), 1e-30)
    panel.add("rsA_edge", 3, 1_020_000, a.copy(), 1e-3)  # candidate: its right edge
    panel.add("rsA_far", 3, 1_020_000 + gap_bp - 1_000, a.copy(), 0.2)  # p >= 0.05: not a candidate
    b = panel.add("rsB", 3, 1_020_000 + gap_bp + 30_000, _random_snp(rng), 1e-25)
    panel.add("rsB_edge", 3, 1_020_000 + gap_bp, b.copy(), 1e-4)  # B's block starts here
    assert _r2(a, b) < 0.01
    res, _ = panel.clump(tmp_path)
    assert res.lead_snps["rsID"].tolist() == ["rsA", "rsB"]
    assert len(res.loci) == n_loci
    if n_loci == 1:
        assert res.loci[["start", "end", "nSNPs", "nLeadSNPs"]].values.tolist() == [
            [1_000_000, 1_020_000 + gap_bp + 30_000, 4, 2]]
        assert res.loci["LeadSNPs"].iloc[0] == "rsA;rsB"
    else:
        assert res.loci[["start", "end"]].values.tolist() == [
            [1_000_000, 1_020_000], [1_020_000 + gap_bp, 1_020_000 + gap_bp + 30_000]]
        assert res.ind_sig_snps["GenomicLocus"].tolist() == [1, 2]
    assert "rsA_far" not in set(res.candidates["rsID"])


def test_maf_filter_applies_to_significant_and_candidate_snps(tmp_path):
    rng = np.random.default_rng(3)
    panel = Panel()
    a = panel.add("rsA", 1, 500_000, _random_snp(rng), 1e-30, maf=0.005)  # best p but too rare
    panel.add("rsA2", 1, 510_000, a.copy(), 1e-20)
    panel.add("rsA3", 1, 520_000, a.copy(), 1e-3, maf=0.009)
    res, _ = panel.clump(tmp_path)
    assert res.ind_sig_snps["rsID"].tolist() == ["rsA2"]
    assert res.candidates["rsID"].tolist() == ["rsA2"]
    res0, _ = panel.clump(tmp_path, ClumpConfig(min_maf=0.0))
    assert res0.ind_sig_snps["rsID"].tolist() == ["rsA"]
    assert res0.loci["nSNPs"].tolist() == [3]


@pytest.mark.parametrize("exclude", [False, True])
def test_mhc_filter(tmp_path, exclude):
    rng = np.random.default_rng(5)
    panel = Panel()
    panel.add("rsMHC", 6, 30_000_000, _random_snp(rng), 1e-30)
    panel.add("rsOut", 6, 24_900_000, _random_snp(rng), 1e-20)
    res, _ = panel.clump(tmp_path, ClumpConfig(exclude_mhc=exclude))
    assert res.ind_sig_snps["rsID"].tolist() == (["rsOut"] if exclude else ["rsOut", "rsMHC"])
    assert len(res.loci) == (1 if exclude else 2)


def test_locus_dims_and_top_snp(tmp_path):
    rng = np.random.default_rng(9)
    panel = Panel()
    a = panel.add("rsA", 4, 2_000_000, _random_snp(rng), 1e-30, dim=17)
    panel.add("rsB", 4, 2_001_000, a.copy(), 1e-12, dim=3)
    panel.add("rsC", 4, 2_002_000, a.copy(), 1e-3, dim=94)  # candidate, not significant
    panel.add("rsD", 4, 2_050_000, _with_r2(rng, a, 0.3), 1e-15, dim=5)  # second independent SNP
    res, _ = panel.clump(tmp_path)
    locus = res.loci.iloc[0]
    assert (locus["rsID"], locus["dim"], locus["dims"]) == ("rsA", 17, "3;5;17")
    assert locus["IndSigSNPs"] == "rsA;rsD"
    assert res.candidates.set_index("rsID")["dim"].to_dict() == {"rsA": 17, "rsB": 3, "rsC": 94, "rsD": 5}
    assert locus["uniqID"] == "4:2000000:A:G"


def test_panel_only_snps_count_in_nsnps_not_ngwassnps(tmp_path):
    rng = np.random.default_rng(2)
    panel = Panel()
    a = panel.add("rsA", 5, 700_000, _random_snp(rng), 1e-30)
    panel.add("rsRef", 5, 650_000, a.copy(), None, in_gwas=False)
    res, _ = panel.clump(tmp_path)
    assert res.loci[["nSNPs", "nGWASSNPs", "start"]].values.tolist() == [[1, 1, 700_000]]
    res, _ = panel.clump(tmp_path, ClumpConfig(include_panel_snps=True))
    assert res.loci[["nSNPs", "nGWASSNPs", "start"]].values.tolist() == [[2, 1, 650_000]]
    ref = res.candidates.set_index("rsID").loc["rsRef"]
    assert np.isnan(ref["gwasP"]) and pd.isna(ref["dim"]) and ref["r2"] == pytest.approx(1.0)


def test_tables_have_fuma_columns_and_fuma_file_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    panel = Panel()
    a = panel.add("rsA", 1, 100_000, _random_snp(rng), 1e-30, dim=1)
    panel.add("rsB", 1, 120_000, _with_r2(rng, a, 0.3), 1.5e-12, dim=2)
    panel.add("rsC", 2, 100_000, _random_snp(rng), 3.3e-11, dim=3)
    res, _ = panel.clump(tmp_path)
    assert tuple(res.loci.columns) == LOCI_COLUMNS
    assert tuple(res.lead_snps.columns) == LEAD_COLUMNS
    assert tuple(res.ind_sig_snps.columns) == IND_SIG_COLUMNS
    assert tuple(res.candidates.columns) == CANDIDATE_COLUMNS
    assert res.ind_sig_snps["No"].tolist() == [1, 2, 3]
    path = write_fuma_loci(res.loci, tmp_path / "GenomicRiskLoci.txt")
    assert path.read_text().splitlines()[0].split("\t") == list(FUMA_LOCI_COLUMNS)
    back = read_fuma_loci(path)
    pd.testing.assert_frame_equal(back, res.loci.loc[:, list(FUMA_LOCI_COLUMNS)], check_dtype=False)
    assert back["p"].tolist() == [1e-30, 3.3e-11]  # exact float round trip
    (tmp_path / "bad.txt").write_text("GenomicLocus\tuniqID\n1\tx\n")
    with pytest.raises(SummaryStatsError, match=r"bad\.txt has columns \['GenomicLocus', 'uniqID'\], exp"):
        read_fuma_loci(tmp_path / "bad.txt")


def test_no_significant_snp_gives_empty_tables(tmp_path):
    rng = np.random.default_rng(1)
    panel = Panel()
    panel.add("rsA", 1, 100, _random_snp(rng), 1e-5)
    res, _ = panel.clump(tmp_path)
    assert res.loci.empty and res.lead_snps.empty and res.ind_sig_snps.empty and res.candidates.empty
    assert tuple(res.loci.columns) == LOCI_COLUMNS


def test_bad_inputs_name_the_problem(tmp_path):
    rng = np.random.default_rng(1)
    panel = Panel()
    panel.add("rsA", 1, 100, _random_snp(rng), 1e-30)
    _, ld = panel.clump(tmp_path)
    minp = pd.DataFrame(panel.rows)
    with pytest.raises(SummaryStatsError, match=r"minp_df lacks columns \['maf'\]"):
        clump_loci(minp.drop(columns="maf"), ld)
    with pytest.raises(GenotypeError, match=r"rsA is at 1:999 in minp_df but at 1:100 in .*panel\.bim"):
        clump_loci(minp.assign(pos_bp=999), ld)
    with pytest.raises(SummaryStatsError, match=r"p must lie in \[0, 1\], got 2\.0"):
        clump_loci(minp.assign(p=2.0), ld)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sig_p": 0.0}, r"ClumpConfig\.sig_p must be in \(0, 1\), got 0\.0"),
    ({"candidate_p": 1e-12}, r"candidate_p must be in \(sig_p = 3\.90625e-10, 1\]"),
    ({"min_maf": 0.5}, r"min_maf must be in \[0, 0\.5\), got 0\.5"),
    ({"r2_ind": 1.5}, r"r2_ind must be in \(0, 1\]"),
    ({"r2_lead": 0.7}, r"r2_lead must be in \(0, r2_ind = 0\.6\]"),
    ({"merge_distance_bp": -1}, r"merge_distance_bp must be an integer >= 0 \(bp\), got -1"),
    ({"window_bp": 0.5}, r"window_bp must be an integer >= 1 \(bp\)"),
    ({"mhc_region_bp": (34_000_000, 25_000_000)}, r"mhc_region_bp must be \(start, end\)"),
])
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(UdipConfigError, match=message):
        ClumpConfig(**kwargs)


def test_defaults_are_fuma_with_bonferroni_over_128_dims():
    cfg = ClumpConfig()
    assert (cfg.sig_p, cfg.r2_ind, cfg.r2_lead, cfg.candidate_p) == (5e-8 / 128, 0.6, 0.1, 0.05)
    assert (cfg.merge_distance_bp, cfg.window_bp) == (250_000, 1_000_000)
    assert (cfg.min_maf, cfg.exclude_mhc) == (0.01, False)


def _simulated_gwas(tmp_path, seed: int):
    """Coalescent genotypes with 3% missing calls, 8 planted causal SNPs, per-SNP regression p."""
    cfg = GenotypeSimConfig(n_samples=1000, chromosomes=(6, 11), chrom_length_bp=3_000_000,
                            n_sibling_pairs=0, n_parent_offspring_pairs=0)
    sim = simulate_genotypes(cfg, seed=seed)
    d, v = sim.dosage.astype(np.float64), sim.variants
    rng = np.random.default_rng(seed)
    causal = rng.choice(np.flatnonzero(v["a1_freq"] > 0.1), 8, replace=False)
    y = d[:, causal] @ rng.choice([-0.5, 0.5], 8) + rng.normal(size=d.shape[0])
    dc, yc = d - d.mean(0), y - y.mean()
    r = dc.T @ yc / np.sqrt((dc**2).sum(0) * (yc**2).sum())
    p = 2 * stats.t.sf(np.abs(r * np.sqrt((d.shape[0] - 2) / (1 - r**2))), d.shape[0] - 2)
    d[rng.random(d.shape) < 0.03] = np.nan
    write_plink(tmp_path / "g", [f"s{i}" for i in range(d.shape[0])], d, v)
    minp = pd.DataFrame({"snp": v["snp"], "chrom": v["chrom"], "pos_bp": v["pos_bp"], "a1": v["a1"],
                         "a2": v["a2"], "p": p, "dim": 0, "beta": r, "se": 0.1,
                         "maf": np.minimum(v["a1_freq"], 1 - v["a1_freq"])})
    return tmp_path / "g", minp


@pytest.mark.skipif(PLINK is None, reason="plink1.9 is not installed (Debian package plink1.9)")
@pytest.mark.parametrize("seed", [1, 2])
def test_independent_snps_equal_plink_clump_index_snps(tmp_path, seed):
    prefix, minp = _simulated_gwas(tmp_path, seed)
    assoc = tmp_path / "assoc.txt"
    assoc.write_text("SNP P\n" + "".join(f"{s} {float(p)!r}\n" for s, p in zip(minp["snp"], minp["p"],
                                                                                 strict=True)))
    subprocess.run(f"{PLINK} --bfile {prefix} --clump {assoc} --clump-p1 {SIG!r} --clump-p2 0.05 "
                   f"--clump-r2 0.6 --clump-kb 1000 --allow-no-sex --out {tmp_path / 'c'}",
                   shell=True, check=True, capture_output=True)
    plink_index = set(pd.read_csv(tmp_path / "c.clumped", sep=r"\s+")["SNP"])
    # PLINK --clump uses haplotype (EM) r²; MAF >= 1% holds for every simulated SNP
    res = clump_loci(minp, LDCalculator(prefix, method="haplotype"), ClumpConfig(), progress=False)
    assert len(plink_index) >= 5
    assert set(res.ind_sig_snps["rsID"]) == plink_index
    assert res.lead_snps["nIndSigSNPs"].sum() >= len(res.lead_snps)
    assert set(res.loci["rsID"]) <= set(res.lead_snps["rsID"])


def test_genome_wide_threshold_divides_by_the_dims_tested():
    from udip_assets.errors import UdipConfigError
    from udip_assets.genetics.clump import genome_wide_threshold

    assert genome_wide_threshold(128) == 5e-8 / 128 and genome_wide_threshold(32) == 5e-8 / 32
    assert genome_wide_threshold(1, alpha=1e-6) == 1e-6
    with pytest.raises(UdipConfigError, match="n_dims must be a whole number >= 1, got 0"):
        genome_wide_threshold(0)
