"""UDIP extraction against model.encode and a numpy loss, batch independence, checkpoints, the figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.preprocess import load_preprocessed
from udip_assets.model import extract
from udip_assets.model.checkpoint import load_checkpoint
from udip_assets.model.config import preset
from udip_assets.model.extract import extract_udips, reconstruction_figure, udip_columns
from udip_assets.model.train import train_model
from udip_assets.model.vit_ae import ViTAE

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL_CFG, _ = preset("tiny", dropout=0.2)


def _model(seed: int = 0) -> ViTAE:
    torch.manual_seed(seed)
    return ViTAE(MODEL_CFG)


def _volumes(paths) -> torch.Tensor:
    return torch.from_numpy(np.stack([load_preprocessed(p) for p in paths])[:, None])  # (n, 1, X, Y, Z)


def _numpy_loss(model: ViTAE, volume: np.ndarray) -> float:
    """MSE over the non-empty patches of one (X, Y, Z) volume, by explicit slicing of the decoded volume."""
    x = torch.from_numpy(volume)[None, None]
    with torch.no_grad():
        pred = model.unpatchify(model.decode(model.encode(x), model.kept_mask(x)))[0, 0].numpy()
    (px, py, pz), (gx, gy, gz) = MODEL_CFG.patch, MODEL_CFG.grid
    errs = []
    for i in range(gx):
        for j in range(gy):
            for k in range(gz):
                sl = np.s_[i * px:(i + 1) * px, j * py:(j + 1) * py, k * pz:(k + 1) * pz]
                if np.any(volume[sl] != 0):
                    errs.append((pred[sl].astype(np.float64) - volume[sl]) ** 2)
    return float(np.mean(errs))


def test_udips_equal_encode_and_losses_equal_a_numpy_mse(blob_scans):
    model = _model().train()  # dropout on: extraction must switch to eval and back
    paths = blob_scans["val"] + blob_scans["inference"]
    ids = [f"sub-{i}" for i in range(len(paths))]
    df = extract_udips(model, paths, ids, batch_size=3, device="cpu", show_progress=False)
    assert model.training
    assert list(df.columns) == ["subject_id", *udip_columns(MODEL_CFG.enc_dim), "recon_loss"]
    assert df["subject_id"].tolist() == ids
    assert (df[udip_columns(MODEL_CFG.enc_dim)].dtypes == np.float32).all()
    model.eval()
    with torch.no_grad():
        expected = model.encode(_volumes(paths)).numpy()
    np.testing.assert_allclose(df[udip_columns(MODEL_CFG.enc_dim)].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    losses = [_numpy_loss(model, load_preprocessed(p)) for p in paths]
    np.testing.assert_allclose(df["recon_loss"].to_numpy(), losses, rtol=1e-5)


def test_udips_do_not_depend_on_the_batch_size(blob_scans):
    model = _model(seed=1)
    paths = blob_scans["val"] + blob_scans["inference"]  # 7 scans: batches of 1, 3 (ragged) and 7
    frames = [extract_udips(model, paths, batch_size=b, show_progress=False) for b in (1, 3, 7)]
    for df in frames[1:]:
        assert df["subject_id"].tolist() == frames[0]["subject_id"].tolist()
        np.testing.assert_allclose(df.drop(columns="subject_id").to_numpy(),
                                   frames[0].drop(columns="subject_id").to_numpy(), rtol=1e-5, atol=1e-6)


def test_a_checkpoint_path_gives_the_same_table_as_its_model(blob_scans, tmp_path):
    model_cfg, cfg = preset("tiny", epochs=1)
    result = train_model(model_cfg, cfg, blob_scans["train"], blob_scans["val"], tmp_path,
                         show_progress=False)
    from_path = extract_udips(result.best_path, blob_scans["inference"], ["a", "b", "c"], batch_size=2,
                              device="cpu", show_progress=False)
    model = load_checkpoint(result.best_path).model
    from_model = extract_udips(model, blob_scans["inference"], ["a", "b", "c"], batch_size=2,
                               show_progress=False)
    assert from_path.equals(from_model)


def test_an_empty_scan_is_named(blob_scans, tmp_path):
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros(MODEL_CFG.volume_shape, dtype=np.float16))
    with pytest.raises(ValueError, match=r"subjects \['ok', 'empty-one'\].*all zero"):
        extract_udips(_model(), [blob_scans["val"][0], empty], ["ok", "empty-one"], batch_size=2,
                      show_progress=False)
    with pytest.raises(UdipConfigError, match="batch_size must be an integer >= 1, got 0"):
        extract_udips(_model(), blob_scans["val"], batch_size=0)


def test_reconstruction_figure_shows_both_scans_under_anonymous_labels(blob_scans, tmp_path):
    model = _model()
    path = reconstruction_figure(model, blob_scans["val"][:2], ["validation scan A", "validation scan B"],
                                 tmp_path / "fig" / "reconstruction.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    originals, recon = extract._reconstruct(model, blob_scans["val"][:2])
    with torch.no_grad():
        expected = model.eval().reconstruct(_volumes(blob_scans["val"][:2]))[:, 0].numpy()
    np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)
    fig = extract._figure(originals, recon, ["validation scan A", "validation scan B"])
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 12 and titles[0] == "validation scan A: original, axial"
    assert titles[-1] == "validation scan B: reconstruction, sagittal"
    assert not any(p.stem in t for t in titles for p in blob_scans["val"])  # no subject ids
    with pytest.raises(UdipConfigError, match="need one label per volume"):
        reconstruction_figure(model, blob_scans["val"][:2], ["A"], tmp_path / "x.png")
