"""Scoring loci against planted truth."""

import numpy as np
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


def test_image_region_phenotypes_take_the_last_visit_and_the_planted_measures(tmp_path):
    from udip_assets.cohort.truth_check import image_region_phenotypes

    path = tmp_path / "truth_image_volumes.tsv"
    pd.DataFrame({"eid": ["7", "7", "9"], "visit": [3, 2, 2], "thalamus_mm3": [1000.0, 900.0, 800.0],
                  "thalamus_stretch": [0.0, 0.0, 0.0], "ventricles_mm3": [5.0, 5.0, 5.0],
                  "ventricles_stretch": [0.05, -0.02, 0.01]}).to_csv(path, sep="\t", index=False)
    planted = pd.DataFrame({"region": ["thalamus", "ventricles", "thalamus"], "kind": ["volume", "shape", "volume"]})
    out = image_region_phenotypes(path, planted)
    assert list(out.columns) == ["vol_thalamus", "stretch_ventricles"] and sorted(out.index) == ["7", "9"]
    assert out.loc["7", "vol_thalamus"] == pytest.approx(np.log(1000.0))  # visit 3, the one kept
    assert out.loc["9", "stretch_ventricles"] == pytest.approx(0.01)


def test_image_region_phenotypes_refuse_another_file(tmp_path):
    from udip_assets.cohort.truth_check import image_region_phenotypes
    from udip_assets.errors import UdipConfigError

    path = tmp_path / "x.tsv"
    pd.DataFrame({"eid": [1]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(UdipConfigError, match="truth_image_volumes.tsv"):
        image_region_phenotypes(path, pd.DataFrame({"region": ["thalamus"], "kind": ["volume"]}))
    pd.DataFrame({"eid": [1], "visit": [2]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(UdipConfigError, match="no column 'thalamus_mm3'.*udip synth --force"):
        image_region_phenotypes(path, pd.DataFrame({"region": ["thalamus"], "kind": ["volume"]}))


def _coded(n: int = 2_000, d: int = 24, noise_sd: float = 1.0, seed: int = 5):
    """UDIPs (n, d) ~ N(0, 1) and a target = 1.0 u3 + 0.6 u10 - 0.4 u17 + N(0, noise_sd^2)."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:05d}" for i in range(n)]
    udips = pd.DataFrame(rng.normal(size=(n, d)), index=ids, columns=[f"udip_{k:03d}" for k in range(d)])
    w = {"udip_003": 1.0, "udip_010": 0.6, "udip_017": -0.4}
    signal = sum(c * udips[k] for k, c in w.items())
    targets = pd.DataFrame({"vol_hippocampus": signal + rng.normal(0, noise_sd, n),
                            "vol_null": rng.normal(size=n)}, index=ids)
    r2_theory = sum(c**2 for c in w.values()) / (sum(c**2 for c in w.values()) + noise_sd**2)
    return udips, targets, r2_theory


def test_encoding_diagnostics_recover_the_planted_r2_and_best_dim():
    from udip_assets.cohort.truth_check import encoding_diagnostics

    udips, targets, r2_theory = _coded()
    table = encoding_diagnostics(udips, targets).set_index("target")
    assert list(table.reset_index().columns) == ["target", "n_subjects", "cv_r2", "best_dim", "best_r"]
    hip = table.loc["vol_hippocampus"]
    assert hip["n_subjects"] == 2_000 and hip["cv_r2"] == pytest.approx(r2_theory, abs=0.05)  # theory 0.605
    assert hip["best_dim"] == "udip_003"
    assert hip["best_r"] == pytest.approx(np.corrcoef(targets["vol_hippocampus"], udips["udip_003"])[0, 1], rel=1e-9)
    assert table.loc["vol_null", "cv_r2"] <= 0.02


def test_encoding_diagnostics_align_on_the_index_not_the_row_order():
    from udip_assets.cohort.truth_check import encoding_diagnostics

    udips, targets, _ = _coded(n=600)
    extra = pd.DataFrame(0.0, index=["only_in_udips"], columns=udips.columns)
    shuffled = pd.concat([udips, extra]).sample(frac=1.0, random_state=1)
    base = encoding_diagnostics(udips, targets)
    moved = encoding_diagnostics(shuffled, targets.sample(frac=1.0, random_state=2))
    pd.testing.assert_frame_equal(base, moved, rtol=1e-10)
    assert (moved["n_subjects"] == 600).all()


def test_encoding_diagnostics_refuse_bad_input():
    from udip_assets.cohort.truth_check import encoding_diagnostics
    from udip_assets.errors import UdipConfigError

    udips, targets, _ = _coded(n=50)
    with pytest.raises(UdipConfigError, match="n_folds must be at least 2, got 1"):
        encoding_diagnostics(udips, targets, n_folds=1)
    with pytest.raises(UdipConfigError, match="share 0 subjects"):
        encoding_diagnostics(udips, targets.set_axis([f"x{i}" for i in range(50)]))
    with pytest.raises(UdipConfigError, match="'flat' must vary"):
        encoding_diagnostics(udips, targets.assign(flat=1.0))


def test_format_diagnostics_aligns_targets_and_states_the_spectrum():
    from udip_assets.cohort.truth_check import format_diagnostics
    from udip_assets.interpret.qc import UdipSpectrum

    table = pd.DataFrame({"target": ["vol_hippocampus", "vol_thalamus"], "n_subjects": [2000, 2000],
                          "cv_r2": [0.8312, -0.004], "best_dim": ["udip_003", "udip_101"], "best_r": [0.61, -0.05]})
    spec = UdipSpectrum(n_subjects=2000, n_dims=128, participation_ratio=1.84, n_pcs_90=3, n_pcs_99=16,
                        pc1_fraction=0.6, explained=(0.6,))
    lines = format_diagnostics(table, spec).splitlines()
    assert lines[0].split() == ["target", "n_subjects", "cv_r2", "best_dim", "best_r"]
    assert lines[1].split() == ["vol_hippocampus", "2000", "0.83", "udip_003", "0.61"]
    assert lines[2].split() == ["vol_thalamus", "2000", "-0.00", "udip_101", "-0.05"]
    assert len({line.index("udip_") for line in lines[1:3]}) == 1  # columns line up
    assert lines[3] == "UDIP effective rank: participation ratio 1.8; 3 PCs hold 90 %, 16 hold 99 %; PC1 60 %"
    assert len(format_diagnostics(table).splitlines()) == 3
