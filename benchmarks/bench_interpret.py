"""Benchmark: the attention-head analysis and SmoothGrad at a model geometry (wall time per function).

Usage
-----
    .venv/bin/python benchmarks/bench_interpret.py [--geometry demo] [--subjects 4] [--threads 2] \
        [--smoothgrad-samples 50] [--out-dir /tmp/bench_interpret]

A randomly initialised ViT-AE of the preset (seed 0) on ``--subjects`` synthetic brains rendered
from the MNI152 template by :mod:`udip_assets.imaging.synth_brain` and preprocessed as the
pipeline does (so the kept patch sets are those of real brains). Each function runs once after a
warm-up of the model; figures are drawn over the template T1 (its first load is timed apart).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from udip_assets.imaging.anatomy import load_anatomy
from udip_assets.imaging.grids import GRIDS
from udip_assets.imaging.preprocess import preprocess_volume
from udip_assets.imaging.synth_brain import Morphology, render_t1, sample_warp
from udip_assets.interpret import attention, saliency
from udip_assets.model.config import preset
from udip_assets.model.extract import reconstruction_figure
from udip_assets.model.vit_ae import ViTAE

GEOMETRIES = {"paper": 1, "demo": 2}  # preset -> resolution (mm)


def synthetic_brains(resolution_mm: int, patch: tuple[int, int, int], n: int) -> torch.Tensor:
    """``n`` rendered, preprocessed brains (n, 1, X', Y', Z') float32 on the MNI grid."""
    anatomy = load_anatomy(GRIDS[resolution_mm])
    vols = []
    for i in range(n):
        rng = np.random.default_rng(i)
        morph = Morphology(age_years=float(rng.uniform(50, 75)), sex=i % 2)
        vols.append(preprocess_volume(render_t1(anatomy, sample_warp(anatomy, morph, rng), morph, rng), patch)[0])
    return torch.from_numpy(np.stack(vols)[:, None].copy())


def timed(label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:<58s} {time.perf_counter() - t0:8.3f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometry", default="demo", choices=sorted(GEOMETRIES))
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoothgrad-samples", type=int, default=50)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/bench_interpret"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset(args.geometry)[0]
    grid = GRIDS[GEOMETRIES[args.geometry]]
    x = synthetic_brains(GEOMETRIES[args.geometry], cfg.patch, args.subjects)
    torch.manual_seed(0)
    model = ViTAE(cfg).eval()
    with torch.no_grad():
        model.encode(x[:1])  # warm-up
    lengths = model.kept_mask(x).sum(1).tolist()
    print(f"{args.geometry}: volumes {cfg.volume_shape}, grid {grid.shape}, {args.subjects} subjects, tokens "
          f"{lengths}, {args.threads} threads, torch {torch.__version__}")
    out = args.out_dir
    timed("patch_centres_mm + patch_of_mm round trip", lambda: attention.patch_of_mm(
        cfg, grid, attention.patch_centres_mm(cfg, grid)))
    summary = timed(f"summarize_attention ({args.subjects} subjects, batch 2)", attention.summarize_attention,
                    model, list(x), grid, batch_size=2)
    print(f"  {len(summary)} rows, {int(summary['is_spotlight'].sum())} spotlight (layer, head, patch) rows")
    vol = timed("spotlight_volume (all layers)", attention.spotlight_volume, summary, cfg, grid)
    anatomy = timed("load_anatomy (template T1 for the figures, once)", load_anatomy, grid)
    timed("write_spotlight_maps (NIfTI + PNG)", attention.write_spotlight_maps, summary, cfg, grid, out,
          background=anatomy.t1)
    corr, order = timed("patch_embedding_correlation", attention.patch_embedding_correlation, model, x)
    print(f"  {len(order)} patches")
    timed("embedding_correlation_figure", attention.embedding_correlation_figure, corr, out / "corr.png")
    timed("qk_singular_values", attention.qk_singular_values, model)
    n = args.smoothgrad_samples
    sg = timed(f"smoothgrad (1 scan, 1 dim, n_samples={n}, batch 8)", saliency.smoothgrad, model, x[0], 0, grid,
               n_samples=n, noise_sd=1.0, seed=0)
    timed("write_saliency_maps (NIfTI + PNG)", saliency.write_saliency_maps, sg, grid, out / "sg.nii.gz",
          out / "sg.png", title="UDIP 0", background=anatomy.t1)
    timed("reconstruction_figure (2 scans, difference=True)", reconstruction_figure, model, list(x[:2]),
          ["scan A", "scan B"], out / "recon.png", difference=True)
    del vol


if __name__ == "__main__":
    main()
