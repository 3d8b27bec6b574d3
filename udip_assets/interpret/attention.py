"""Attention-head analysis of the ViT autoencoder: where patches sit, which patches every head attends
to ("spotlight" tokens), and the two mechanisms the paper names for them (input embeddings, W_K^T W_Q).

Notes
-----
**Coordinates.** Patch n of the model's (gx, gy, gz) patch grid (C order, as ``ViTAE.patchify``)
covers padded voxels ``[a px, (a+1) px)`` on each axis; its centre is padded voxel
``a px + (px - 1) / 2``, i.e. cohort-grid voxel ``a px + (px - 1) / 2 - offset`` (offsets from
:func:`udip_assets.imaging.preprocess.pad_offsets`), mapped to world mm by the grid affine.
:func:`patch_of_voxel` is the inverse: a (continuous) voxel coordinate c lies in patch
``floor((c + offset + 0.5) / p)`` per axis (voxel v spans [v - 0.5, v + 0.5)), so a patch centre
maps back to its patch exactly and an integer voxel to the patch ``patchify`` puts it in.

**Attention received (attention_in).** For scan b, layer l, head h and a patch n that scan b keeps
(it is a token, column j): ``attention_in_b = mean_i A[b, h, i, j]`` over scan b's own query rows
i < L_b (padding rows and columns, and patches scan b does not keep, play no part). The summary is
the mean of ``attention_in_b`` over the scans that keep patch n, every scan weighing the same (as
in the training loss). Rows of A sum to 1, so within one scan the values over its tokens sum to 1
and average 1 / L_b: a head that attends uniformly gives every patch ~1 / L.

**Spotlight rule.** Within each (layer, head), over the patches with a value, a patch is a
spotlight token when ``attention_in > mean + n_sd * SD`` (population SD, ``n_sd = 2`` by default):
the patches that receive far more than their share. The paper describes spotlights as a sparse
subset (< 1/3 of the patches) that all others attend to; an outlier rule adapts to how sparse each
head is, where a fixed top-k would force k spotlights onto a uniform head (which gets none here:
SD 0) and cut a head with many.

**Input embeddings.** The paper ties spotlights to the input embedding matrix projecting most
patches to one direction. :func:`patch_embedding_correlation` takes what the first block receives,
``patch_embed(patch voxels) + pos_embed`` (the positional embedding is part of the input and
distinguishes patches that look alike), averages each patch position over the scans that keep it,
and correlates patches (Pearson over the ``enc_dim`` coordinates; for centred rows this is the
cosine the first LayerNorm's output would give with unit gain). Rows are reordered by average-linkage
hierarchical clustering on ``1 - corr`` (the paper's Figure 10). Computed in float32 even when
``cfg.bf16``.

**W_K^T W_Q.** Head h of a layer scores tokens x_i, x_j as ``(W_Q x_i) . (W_K x_j) = x_j^T W_K^T W_Q
x_i`` (times ``head_dim ** -0.5`` and plus bias terms, both left out: the singular values describe
the bilinear form the paper analyses). ``W_Q``, ``W_K`` are the (head_dim, enc_dim) row blocks of
the fused ``qkv`` weight that ``Attention._split_heads`` gives head h: rows ``h d : (h+1) d`` for
the query and ``enc_dim + h d : enc_dim + (h+1) d`` for the key. Its rank is at most ``head_dim``,
so the ``head_dim`` largest singular values are returned (the rest are 0 up to rounding).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.cluster import hierarchy  # noqa: E402
from scipy.spatial.distance import squareform  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from udip_assets.atomic import save_figure_atomic  # noqa: E402
from udip_assets.errors import UdipConfigError  # noqa: E402
from udip_assets.imaging.grids import Grid  # noqa: E402
from udip_assets.interpret.brainmaps import grid_offsets, paint_patches, write_map  # noqa: E402
from udip_assets.interpret.inputs import as_vitae, as_volume  # noqa: E402
from udip_assets.model.config import ModelConfig  # noqa: E402
from udip_assets.model.vit_ae import AttentionMaps, ViTAE  # noqa: E402

SUMMARY_COLUMNS = ["layer", "head", "patch_index", "x_mm", "y_mm", "z_mm", "attention_in", "is_spotlight"]


# --------------------------------------------------------------------------------- coordinates
def _patch_centres_voxel(cfg: ModelConfig, grid: Grid) -> np.ndarray:
    """(N, 3) float64 cohort-grid voxel coordinates of every patch centre (may be fractional)."""
    offsets = np.asarray(grid_offsets(cfg, grid), dtype=np.float64)
    abc = np.stack(np.unravel_index(np.arange(cfg.n_patches), cfg.grid), axis=1)  # (N, 3) grid coords
    patch = np.asarray(cfg.patch, dtype=np.float64)
    return abc * patch + (patch - 1) / 2 - offsets  # (N, 3)


def patch_centres_mm(cfg: ModelConfig, grid: Grid) -> np.ndarray:
    """World coordinates (mm) of every patch centre.

    Parameters
    ----------
    cfg : ModelConfig
        The model (its ``patch`` and padded ``volume_shape``).
    grid : Grid
        The cohort grid the scans were preprocessed on (padded to ``cfg.volume_shape``).

    Returns
    -------
    ndarray (N, 3) float64
        Row n: the (x, y, z) mm of patch n's centre (C order of ``cfg.grid``).

    Raises
    ------
    UdipConfigError
        ``grid`` does not pad to the model's input shape.
    """
    ijk = _patch_centres_voxel(cfg, grid)  # (N, 3)
    return ijk @ grid.affine[:3, :3].T + grid.affine[:3, 3]  # (N, 3)


def patch_of_voxel(cfg: ModelConfig, grid: Grid, ijk: np.ndarray) -> np.ndarray:
    """The patch holding each cohort-grid voxel coordinate; inverse of the patch centres.

    Parameters
    ----------
    cfg : ModelConfig
    grid : Grid
    ijk : array (..., 3)
        Voxel coordinates on ``grid`` (integers, or continuous with voxel centres at integers);
        may lie in the padding, but inside the padded volume.

    Returns
    -------
    ndarray (...) int64
        Patch indices (C order of ``cfg.grid``), as ``ViTAE.patchify`` places those voxels.

    Raises
    ------
    ValueError
        A coordinate lies outside the model's padded volume.
    """
    ijk = np.asarray(ijk, dtype=np.float64)
    if ijk.shape[-1:] != (3,):
        raise ValueError(f"ijk must be voxel coordinates (..., 3), got shape {ijk.shape}")
    padded = ijk + np.asarray(grid_offsets(cfg, grid)) + 0.5  # continuous padded coordinates
    outside = np.any((padded < 0) | (padded >= np.asarray(cfg.volume_shape)), axis=-1)
    if np.any(outside):
        bad = ijk[outside][0].tolist()
        raise ValueError(f"voxel {bad} lies outside the model's padded volume {cfg.volume_shape} "
                         f"(grid {grid.name} {grid.shape} at offsets {grid_offsets(cfg, grid)})")
    abc = np.floor(padded / np.asarray(cfg.patch)).astype(np.int64)  # (..., 3)
    return np.ravel_multi_index(tuple(np.moveaxis(abc, -1, 0)), cfg.grid).astype(np.int64)


def patch_of_mm(cfg: ModelConfig, grid: Grid, xyz_mm: np.ndarray) -> np.ndarray:
    """The patch holding each world coordinate (..., 3) mm -> (...) int64 (see :func:`patch_of_voxel`)."""
    xyz = np.asarray(xyz_mm, dtype=np.float64)
    inv = np.linalg.inv(grid.affine)
    return patch_of_voxel(cfg, grid, xyz @ inv[:3, :3].T + inv[:3, 3])


# --------------------------------------------------------------------------- attention received
def subject_attention_in(maps: AttentionMaps) -> Tensor:
    """Attention each patch receives in each scan: the mean over the scan's query rows of its column.

    Parameters
    ----------
    maps : AttentionMaps
        From :meth:`ViTAE.attention_maps` (per layer (B, H, L, L), ``patch_index`` (B, L)).

    Returns
    -------
    Tensor (n_layers, B, H, N) float64
        NaN where scan b does not keep patch n.
    """
    valid = maps.patch_index >= 0  # (B, L)
    if not maps.maps or maps.maps[0].shape[2:] != valid.shape[1:] * 2:
        raise ValueError("maps must hold at least one (B, H, L, L) layer matching patch_index (B, L)")
    n_rows = valid.sum(1).double()  # (B,) tokens per scan
    b_idx, l_idx = valid.nonzero(as_tuple=True)  # (T,), (T,)
    p_idx = maps.patch_index[b_idx, l_idx]  # (T,)
    b, n = maps.kept.shape
    out = torch.full((len(maps.maps), b, maps.maps[0].shape[1], n), float("nan"), dtype=torch.float64)
    for layer, a in enumerate(maps.maps):
        rows = a.double().cpu() * valid[:, None, :, None]  # (B, H, L, L), padding rows zeroed
        col_mean = rows.sum(dim=2) / n_rows[:, None, None]  # (B, H, L)
        out[layer][b_idx, :, p_idx] = col_mean[b_idx, :, l_idx]  # (T, H)
    return out


class AttentionInAccumulator:
    """Running mean over scans of :func:`subject_attention_in`, one batch of maps at a time.

    Parameters
    ----------
    n_layers, n_heads, n_patches : int
    """

    def __init__(self, n_layers: int, n_heads: int, n_patches: int) -> None:
        self.sums = np.zeros((n_layers, n_heads, n_patches), dtype=np.float64)
        self.counts = np.zeros(n_patches, dtype=np.int64)
        self.n_subjects = 0

    def add(self, maps: AttentionMaps) -> None:
        """Add a batch of scans' maps (then they may be dropped)."""
        per_scan = subject_attention_in(maps).numpy()  # (n_layers, B, H, N)
        if per_scan.shape[0] != self.sums.shape[0] or per_scan.shape[2:] != self.sums.shape[1:]:
            raise ValueError(f"maps have {per_scan.shape[0]} layers x {per_scan.shape[2]} heads x "
                             f"{per_scan.shape[3]} patches, the accumulator {self.sums.shape}")
        self.sums += np.nansum(per_scan, axis=1)
        self.counts += maps.kept.sum(0).cpu().numpy()
        self.n_subjects += per_scan.shape[1]

    def mean(self) -> np.ndarray:
        """(n_layers, H, N) float64 mean attention_in; NaN for patches no scan kept."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / self.counts, np.nan)


def spotlight_mask(attention_in: np.ndarray, n_sd: float = 2.0) -> np.ndarray:
    """Spotlight tokens: ``attention_in > mean + n_sd * SD`` over the finite values of the last axis.

    Parameters
    ----------
    attention_in : ndarray (..., N)
        One head's values per patch on the last axis; NaN for patches without a value.
    n_sd : float
        Standard deviations above the head's mean (population SD, ddof 0).

    Returns
    -------
    ndarray (..., N) bool
        False where ``attention_in`` is NaN; all False for a uniform head (SD below 1e-9 of the
        mean, i.e. rounding).
    """
    if not np.isfinite(n_sd):
        raise UdipConfigError(f"n_sd must be a finite number of standard deviations, got {n_sd!r}")
    values = np.asarray(attention_in, dtype=np.float64)
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(values, axis=-1, keepdims=True)
        sd = np.sqrt(np.nanmean((values - mean) ** 2, axis=-1, keepdims=True))
        spread = sd > 1e-9 * np.abs(mean)  # a uniform head's SD is rounding only
        return finite & spread & (values > mean + n_sd * sd)


def attention_summary(maps: AttentionMaps | Iterable[AttentionMaps], cfg: ModelConfig, grid: Grid, *,
                      n_sd: float = 2.0) -> pd.DataFrame:
    """Attention each patch receives per layer and head over a set of scans, and the spotlight tokens.

    Parameters
    ----------
    maps : AttentionMaps or iterable of AttentionMaps
        One batch, or batches consumed one at a time (e.g. :func:`iter_attention_maps`), so that
        only one batch's maps are held at once.
    cfg : ModelConfig
        The model that produced the maps.
    grid : Grid
        The cohort grid (for the patch centres in mm).
    n_sd : float
        Spotlight rule: ``attention_in > mean + n_sd * SD`` within each (layer, head).

    Returns
    -------
    DataFrame
        One row per (layer, head, patch kept by at least one scan), sorted by them: ``layer``,
        ``head`` (0-based int), ``patch_index`` (C order of ``cfg.grid``), ``x_mm``, ``y_mm``,
        ``z_mm`` (patch centre), ``attention_in`` (float64, see the module Notes),
        ``is_spotlight`` (bool).

    Raises
    ------
    ValueError
        No maps, or maps that do not match ``cfg``.
    """
    batches = [maps] if isinstance(maps, AttentionMaps) else maps
    acc = None
    for batch in batches:
        if acc is None:
            acc = AttentionInAccumulator(len(batch.maps), batch.maps[0].shape[1], cfg.n_patches)
        acc.add(batch)
    if acc is None or acc.n_subjects == 0:
        raise ValueError("attention_summary got no attention maps; pass at least one batch of scans")
    mean = acc.mean()  # (n_layers, H, N)
    spot = spotlight_mask(mean, n_sd)
    layer, head, patch = np.nonzero(np.isfinite(mean))
    centres = patch_centres_mm(cfg, grid)[patch]  # (rows, 3)
    return pd.DataFrame({
        "layer": layer.astype(np.int64), "head": head.astype(np.int64), "patch_index": patch.astype(np.int64),
        "x_mm": centres[:, 0], "y_mm": centres[:, 1], "z_mm": centres[:, 2],
        "attention_in": mean[layer, head, patch], "is_spotlight": spot[layer, head, patch],
    })  # fmt: skip


def iter_attention_maps(model: ViTAE | nn.Module, volumes: Sequence, *, batch_size: int = 2
                        ) -> Iterator[AttentionMaps]:
    """Attention maps of ``volumes``, one batch at a time, on the CPU (model in eval mode meanwhile).

    Parameters
    ----------
    model : ViTAE (or DDP-wrapped)
        Runs on its own device.
    volumes : sequence of str, Path, ndarray or Tensor
        Preprocessed caches or padded volumes on the model's grid.
    batch_size : int
        Scans per forward pass (the maps of one batch are (B, H, L, L) per layer).

    Yields
    ------
    AttentionMaps
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UdipConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    net = as_vitae(model)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        for start in range(0, len(volumes), batch_size):
            x = torch.stack([as_volume(v) for v in volumes[start:start + batch_size]])  # (B, 1, X, Y, Z)
            m = net.attention_maps(x.to(device))
            yield AttentionMaps([a.cpu() for a in m.maps], m.patch_index.cpu(), m.kept.cpu())
    finally:
        net.train(was_training)


def summarize_attention(model: ViTAE | nn.Module, volumes: Sequence, grid: Grid, *, batch_size: int = 2,
                        n_sd: float = 2.0) -> pd.DataFrame:
    """:func:`attention_summary` of ``volumes`` through :func:`iter_attention_maps` (batch by batch)."""
    net = as_vitae(model)
    return attention_summary(iter_attention_maps(net, volumes, batch_size=batch_size), net.cfg, grid, n_sd=n_sd)


# ----------------------------------------------------------------------------- spotlight maps
def spotlight_volume(summary: pd.DataFrame, cfg: ModelConfig, grid: Grid, layer: int | None = None
                     ) -> np.ndarray:
    """Paint every patch with its attention_in (mean over heads, and over layers unless ``layer``).

    Parameters
    ----------
    summary : DataFrame
        From :func:`attention_summary`.
    cfg : ModelConfig
    grid : Grid
    layer : int, optional
        One encoder layer (0-based); default the mean over all layers.

    Returns
    -------
    ndarray (X, Y, Z) = ``grid.shape`` float32
        0 in patches no scan kept.
    """
    missing = sorted({"layer", "patch_index", "attention_in"} - set(summary.columns))
    if missing:
        raise ValueError(f"summary lacks columns {missing}; pass the table attention_summary returns")
    if layer is not None:
        layers = sorted(int(v) for v in summary["layer"].unique())
        if layer not in layers:
            raise ValueError(f"layer {layer} is not in the summary; it holds layers {layers}")
        summary = summary[summary["layer"] == layer]
    per_patch = summary.groupby("patch_index")["attention_in"].mean()
    values = np.zeros(cfg.n_patches, dtype=np.float32)
    values[per_patch.index.to_numpy()] = per_patch.to_numpy()
    return paint_patches(values, cfg, grid)


def write_spotlight_maps(summary: pd.DataFrame, cfg: ModelConfig, grid: Grid, out_dir: str | Path, *,
                         layer: int | None = None, background: np.ndarray | None = None) -> tuple[Path, Path]:
    """NIfTI and PNG (over the template) of :func:`spotlight_volume`.

    Files are ``spotlight_all_layers`` or ``spotlight_layer_{layer:02d}`` ``.nii.gz`` / ``.png`` in
    ``out_dir``; ``background`` as :func:`udip_assets.interpret.brainmaps.overlay_figure`. The
    NIfTI holds every patch's value; the PNG colours only the patches above the mean over the
    painted patches (about a uniform share, 1 / L), so the template shows where attention is low.

    Returns
    -------
    (Path, Path)
        The NIfTI and the PNG.
    """
    volume = spotlight_volume(summary, cfg, grid, layer)
    stem = "spotlight_all_layers" if layer is None else f"spotlight_layer_{layer:02d}"
    what = "all layers" if layer is None else f"layer {layer}"
    title = f"attention received, mean over heads, {what}"
    painted = volume[volume > 0]
    floor = float(painted.mean()) if painted.size else 0.0
    return write_map(volume, grid, Path(out_dir) / f"{stem}.nii.gz", Path(out_dir) / f"{stem}.png",
                     title=title, background=background, threshold=floor, vmin=floor)


# ------------------------------------------------------------------------ embeddings, W_K^T W_Q
@torch.no_grad()
def _mean_input_embeddings(model: ViTAE, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean ``patch_embed + pos_embed`` over the scans keeping each patch (M, C) float64, patches (M,))."""
    device = next(model.parameters()).device
    x = model.check_volumes(x.to(device))  # (B, 1, X, Y, Z)
    kept = model.kept_mask(x)  # (B, N)
    emb = model.patch_embed(model.patchify(x)).float() + model.pos_embed  # (B, N, C)
    counts = kept.sum(0)  # (N,)
    mean = (emb * kept[..., None]).sum(0).double() / counts.clamp(min=1)[:, None]  # (N, C)
    patches = counts.nonzero().squeeze(1)  # (M,)
    return mean[patches].cpu().numpy(), patches.cpu().numpy()


def patch_embedding_correlation(model: ViTAE | nn.Module, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Correlation between the patches' input embeddings, reordered by hierarchical clustering.

    Parameters
    ----------
    model : ViTAE (or DDP-wrapped)
    x : Tensor (B, 1, X, Y, Z) or (B, X, Y, Z)
        Padded volumes; the embedding of a patch position is averaged over the scans keeping it.

    Returns
    -------
    corr : ndarray (M, M) float64
        Pearson correlation (over the ``enc_dim`` coordinates) between the M patches kept by at
        least one scan, rows and columns in the clustered order.
    order : ndarray (M,) int64
        Grid patch index of each row: ``corr[a, b]`` correlates patches ``order[a]`` and ``order[b]``.

    Notes
    -----
    See the module Notes (input embeddings): ``patch_embed + pos_embed``, average linkage on
    ``1 - corr``, leaves in dendrogram order.
    """
    net = as_vitae(model)
    emb, patches = _mean_input_embeddings(net, x)  # (M, C), (M,)
    if len(patches) < 2:
        raise ValueError(f"the scans keep {len(patches)} patch(es); a correlation needs at least 2")
    corr = np.corrcoef(emb)  # (M, M)
    if not np.all(np.isfinite(corr)):
        raise ValueError("a patch embedding is constant over its coordinates; its correlation is undefined")
    leaves = cluster_order(corr)
    return corr[np.ix_(leaves, leaves)], patches[leaves].astype(np.int64)


def cluster_order(corr: np.ndarray) -> np.ndarray:
    """Dendrogram leaf order (M,) of average-linkage clustering of a correlation matrix on ``1 - corr``."""
    dist = np.clip(1.0 - np.asarray(corr, dtype=np.float64), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return hierarchy.leaves_list(hierarchy.linkage(squareform(dist, checks=False), method="average"))


def embedding_correlation_figure(corr: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """Heatmap PNG of :func:`patch_embedding_correlation` (colour scale -1..1), written atomically."""
    corr = np.asarray(corr)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="Pearson correlation")
    ax.set_xlabel("patch (clustered order)")
    ax.set_ylabel("patch (clustered order)")
    ax.set_title(title or f"input embeddings of {len(corr)} patches, average-linkage order", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def qk_singular_values(model: ViTAE | nn.Module) -> pd.DataFrame:
    """Singular values of ``W_K^T W_Q`` for every head of every encoder layer.

    Returns
    -------
    DataFrame
        One row per (layer, head, k): ``layer``, ``head``, ``k`` (0-based, descending values,
        k < head_dim), ``singular_value`` (float64). See the module Notes for the head split.
    """
    net = as_vitae(model)
    rows = []
    for layer, block in enumerate(net.blocks):
        attn = block.attn
        c, d = attn.heads * attn.head_dim, attn.head_dim
        w = attn.qkv.weight.detach().double().cpu().view(3, attn.heads, d, c)  # (q|k|v, H, d, C)
        qk = w[1].transpose(1, 2) @ w[0]  # (H, C, C): W_K^T W_Q per head
        sv = torch.linalg.svdvals(qk)[:, :d].numpy()  # (H, d)
        for head in range(attn.heads):
            rows += [(layer, head, k, float(sv[head, k])) for k in range(d)]
    return pd.DataFrame(rows, columns=["layer", "head", "k", "singular_value"])


__all__ = ["SUMMARY_COLUMNS", "AttentionInAccumulator", "attention_summary", "cluster_order",
           "embedding_correlation_figure", "iter_attention_maps", "patch_centres_mm",
           "patch_embedding_correlation", "patch_of_mm", "patch_of_voxel", "qk_singular_values",
           "spotlight_mask", "spotlight_volume", "subject_attention_in", "summarize_attention",
           "write_spotlight_maps"]
