"""Ceilings of the truth check: the streamed Gram matrix, PCA codes and voxel ridge against numpy / scikit-learn."""

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold

from udip_assets.cohort.image_ceiling import (
    ImageGram,
    ceiling_table,
    image_gram,
    pca_codes,
    voxel_ridge_cv_r2,
    voxel_ridge_cv_r2s,
)
from udip_assets.errors import UdipConfigError


def _scans(tmp_path, n=9, shape=(4, 5, 3), seed=0):
    """n volumes with two voxels zero in every scan (background); their paths and the (n, voxels) matrix."""
    rng = np.random.default_rng(seed)
    vols = rng.normal(size=(n, *shape)).astype(np.float32)
    vols[:, 0, 0, 0] = 0.0
    vols[:, 3, 4, 2] = 0.0
    paths = []
    for i, v in enumerate(vols):
        paths.append(tmp_path / f"s{i}.npy")
        np.save(paths[-1], v)
    return paths, vols.reshape(n, -1).astype(np.float64)


@pytest.mark.parametrize("chunk", [7, 60, None])
def test_streamed_gram_equals_the_centred_product(tmp_path, chunk):
    paths, x = _scans(tmp_path)
    xc = x - x.mean(axis=0)
    out = image_gram(paths, chunk_voxels=chunk)
    np.testing.assert_allclose(out.gram, xc @ xc.T, rtol=1e-5, atol=1e-5)
    assert out.n_voxels == 60 - 2


def test_a_scan_of_another_shape_is_refused_naming_both_files(tmp_path):
    paths, _ = _scans(tmp_path, n=4)
    np.save(paths[2], np.zeros((4, 5, 2), np.float32))
    with pytest.raises(UdipConfigError, match=r"s2\.npy has shape \(4, 5, 2\), expected \(4, 5, 3\).*s0\.npy"):
        image_gram(paths)
    with pytest.raises(UdipConfigError, match="at least 3 scans"):
        image_gram(paths[:2])


def test_pca_codes_equal_scikit_learn_pca_up_to_sign():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 50)) @ np.diag(np.linspace(3, 0.1, 50))
    xc = x - x.mean(axis=0)
    ours = pca_codes(xc @ xc.T, 5)
    ref = PCA(5, svd_solver="full").fit_transform(x)
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours, ref * signs, rtol=1e-8, atol=1e-8)
    assert (ours[np.abs(ours).argmax(axis=0), np.arange(5)] > 0).all()  # the documented sign rule
    with pytest.raises(UdipConfigError, match=r"n_components must be an integer in \[1, 29\]"):
        pca_codes(xc @ xc.T, 30)


def _fold_scale(x, train):
    """Mean eigenvalue of the training rows' centred Gram matrix: the unit of the relative alphas."""
    xt = x[train] - x[train].mean(axis=0)
    return np.sum(xt**2) / len(train)


def test_voxel_ridge_equals_scikit_learn_ridge_at_one_alpha():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 200)) + 5.0  # off-centre: the intercept must be handled
    y = x[:, :10] @ rng.normal(size=10) + rng.normal(size=60)
    rel = 0.05
    pred = np.empty(60)
    for train, test in KFold(5, shuffle=True, random_state=0).split(x):
        model = Ridge(alpha=rel * _fold_scale(x, train)).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
    ref = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert voxel_ridge_cv_r2(x @ x.T, y, relative_alphas=np.array([rel])) == pytest.approx(ref, rel=1e-8)


def test_voxel_ridge_chooses_its_penalty_by_leave_one_out_as_ridgecv():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 150))
    y = x[:, :5] @ np.array([1.0, -0.5, 0.3, 0.2, 0.1]) + 0.5 * rng.normal(size=80)
    rel = np.logspace(-4, 1, 9)
    pred = np.empty(80)
    for train, test in KFold(5, shuffle=True, random_state=0).split(x):
        model = RidgeCV(alphas=rel * _fold_scale(x, train)).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
    ref = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert voxel_ridge_cv_r2(x @ x.T, y, relative_alphas=rel) == pytest.approx(ref, rel=1e-6)


def test_several_phenotypes_at_once_each_choose_their_penalty_as_alone():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(120, 60))
    ys = np.column_stack([x @ rng.normal(size=60) + 0.3 * rng.normal(size=120),  # strong: a small penalty
                          x[:, 7] + 3.0 * rng.normal(size=120),  # weak: a large one
                          rng.normal(size=120)])
    together = voxel_ridge_cv_r2s(x @ x.T, ys)  # one decomposition per fold for all three
    alone = [voxel_ridge_cv_r2(x @ x.T, ys[:, j]) for j in range(3)]
    np.testing.assert_allclose(together, alone, rtol=1e-10)
    assert together[0] > 0.8 > together[1]


def test_a_phenotype_written_in_the_voxels_is_recovered_and_noise_is_not():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 100))
    xc = x - x.mean(axis=0)
    written = x[:, 17] - 0.5 * x[:, 73] + 0.05 * rng.normal(size=300)
    assert voxel_ridge_cv_r2(xc @ xc.T, written) > 0.9
    assert voxel_ridge_cv_r2(xc @ xc.T, rng.normal(size=300)) < 0.05
    with pytest.raises(UdipConfigError, match="finite and not constant"):
        voxel_ridge_cv_r2(xc @ xc.T, np.ones(300))


def test_ceiling_table_scores_voxels_and_the_linear_code_on_the_same_sorted_subjects():
    rng = np.random.default_rng(5)
    n = 200
    latent = rng.normal(size=(n, 3))  # three strong modes and a weak one that a 3-number code misses
    weak = rng.normal(size=n)
    x = latent @ rng.normal(size=(3, 120)) * 5 + np.outer(weak, rng.normal(size=120)) * 0.3
    x += 0.1 * rng.normal(size=x.shape)
    xc = x - x.mean(axis=0)
    ids = [f"s{i:03d}" for i in rng.permutation(n)]  # not sorted: the table sorts them
    targets = pd.DataFrame({"strong": latent[:, 0], "weak": weak, "gappy": latent[:, 0]}, index=ids)
    targets.iloc[:20, 2] = np.nan  # a target some subjects lack: regressed on the others alone
    table, codes = ceiling_table(ImageGram(xc @ xc.T, 120), ids, targets, n_components=3)
    assert list(table["target"]) == ["strong", "weak", "gappy"]
    order = np.argsort(ids)
    keep = np.isfinite(targets["gappy"].to_numpy())[order]
    gram_sorted = (xc @ xc.T)[np.ix_(order, order)]
    assert table.iloc[2]["voxels_cv_r2"] == pytest.approx(
        voxel_ridge_cv_r2(gram_sorted[np.ix_(keep, keep)], latent[order, 0][keep]), rel=1e-12)
    assert list(codes.index) == sorted(ids) and list(codes.columns) == ["udip_000", "udip_001", "udip_002"]
    strong, weak_row = table.iloc[0], table.iloc[1]
    assert strong["voxels_cv_r2"] > 0.95 and strong["pca_cv_r2"] > 0.95
    assert weak_row["voxels_cv_r2"] > 0.8 > 0.2 > weak_row["pca_cv_r2"]  # in the image, not in the code
    with pytest.raises(UdipConfigError, match="targets lack 1 of the scans' subjects"):
        ceiling_table(ImageGram(xc @ xc.T, 120), ids, targets.iloc[1:], n_components=3)
