"""Benchmark on a GPU: the ViT-AE training step (ours against the authors' code on the same GPU) and the
GWAS scan (products on the GPU against the same scan on the node's CPU cores), each projected to the
scale the issue names: the paper's training (400 epochs x 4,597 scans) and UK Biobank's GWAS (22,000
subjects x 10 M SNPs x 128 UDIPs).

Usage (one GPU node; without a CUDA device it prints why and exits 0, as the CPU benchmarks skip)::

    python benchmarks/bench_gpu.py [--parts train,gwas] [--authors-repo PATH] [--reps 20]
        [--gwas-samples 22000] [--gwas-snps 50000] [--work /tmp/udip_bench_gpu]
        [--out benchmarks/results/gpu.json] [--results-md benchmarks/RESULTS.md]
    python benchmarks/bench_gpu.py --device cpu --geometry demo --gwas-samples 2000 --gwas-snps 4000
        # a smoke run of the same code on a machine without a GPU (no GPU figures)

It needs only torch, numpy, pandas, scipy and pyarrow beside the ``udip_assets`` package (no Dagster,
DuckDB, nilearn or PLINK), so it runs on a bare GPU image with the repository as its working tree.

``train`` (batch 2, the paper's geometry 182x224x182 and 14x16x14 patches, or the demo's): the inputs
are brain-sized ellipsoids of N(0, 1) voxels on an exact-zero background, two per step, of slightly
different sizes so that the scans keep different numbers of patches (~900 tokens at 1 mm, as real
registered brains); only the token counts matter for time. Variants, each a full step (zero_grad,
forward, backward, AdamW) timed with CUDA synchronisation, interleaved round-robin:

``authors`` / ``authors_bf16``
    The authors' ``AVGPOOLMODEL`` from a checkout of github.com/ZhiGroup/UDIP-ViT (``--authors-repo``,
    unmodified), float32 and under bfloat16 autocast, torch's default AdamW.
``baseline``
    Our code on the authors' path: union batch mask, per-batch SDPA, float32, default AdamW.
``ours_fp32``, ``ours_bf16``
    Per-scan kept sets, attention 'varlen' (one variable-length SDPA call over the packed scans),
    fused AdamW; float32 / bfloat16 autocast.
``ours_bf16_loop``
    As ``ours_bf16`` with one SDPA call per scan ('sdpa'): what the variable-length call buys.

Then the batch gather from scans held on the GPU in float16 (``TrainConfig.resident``), and a
projection of the paper's training: 400 x ceil(4,597 / 2) steps at the measured step time plus 400
validation passes over 1,533 scans at the measured inference time per scan.

``gwas``: a PLINK .bed of ``--gwas-samples`` x ``--gwas-snps`` random genotypes (MAF 0.01-0.5),
128 phenotypes and 18 covariates, scanned by :func:`udip_assets.genetics.gwas.scan_associations`
(every SNP x dim written to Parquet, minP, joint test) with ``device='cuda'`` and with
``device='cpu'`` on every core of the node; agreement of the two in -log10 p; seconds per SNP of each,
projected linearly to 10 M SNPs at the same sample size.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from results_md import write_result  # benchmarks/results_md.py, beside this script

from udip_assets.model.config import preset
from udip_assets.model.vit_ae import ViTAE

SECTION = "## GPU"
PAPER_EPOCHS, PAPER_TRAIN, PAPER_VAL = 400, 4_597, 1_533
UKB_SNPS = 10_000_000
OURS = {  # name -> (model overrides, bf16 autocast of the step, AdamW implementation)
    "baseline": (dict(union_mask=True, attn_backend="sdpa"), False, "default"),
    "ours_fp32": (dict(attn_backend="varlen"), False, "fused"),
    "ours_bf16": (dict(attn_backend="varlen"), True, "fused"),
    "ours_bf16_loop": (dict(attn_backend="sdpa"), True, "fused"),
}


def brain_like_volumes(shape: tuple[int, int, int], n: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` ellipsoids of N(0, 1) voxels the size of an MNI-registered brain: (n, 1, X, Y, Z) float32."""
    rng = np.random.default_rng(seed)
    axes = [np.arange(s, dtype=np.float32) for s in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    vols = []
    for i in range(n):
        radii = np.array(shape) * np.array([0.36, 0.37, 0.33]) * (1 - 0.03 * i)
        centre = np.array(shape) / 2.0
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0
        vols.append(np.where(inside, rng.standard_normal(shape, dtype=np.float32), 0.0))
    return torch.from_numpy(np.stack(vols)[:, None].astype(np.float32))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _authors(repo: Path, device: torch.device) -> torch.nn.Module:
    if not (repo / "models" / "model_avg_pool.py").is_file():
        sys.exit(f"--authors-repo {repo}: no models/model_avg_pool.py; pass a checkout of "
                 "https://github.com/ZhiGroup/UDIP-ViT")
    sys.path.insert(0, str(repo))
    from models.model_avg_pool import AVGPOOLMODEL  # the authors' package, from their checkout

    torch.manual_seed(0)
    return AVGPOOLMODEL(embed_dim=128, decoder_embed_dim=64, num_heads=8).to(device)


def _steppers(geometry: str, device: torch.device, authors_repo: Path | None) -> dict:
    """name -> (step function(x), inference function(x) -> loss)."""
    out = {}
    for name, (overrides, bf16, impl) in OURS.items():
        cfg, _ = preset(geometry, **overrides)
        torch.manual_seed(0)
        model = ViTAE(cfg).to(device)
        fused = impl == "fused"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
        out[name] = _step_fns(model, opt, bf16, device, lambda m, x: m(x).loss)
    if authors_repo is not None and geometry == "paper":
        for name, bf16 in (("authors", False), ("authors_bf16", True)):
            model = _authors(authors_repo, device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            out[name] = _step_fns(model, opt, bf16, device, lambda m, x: m(x[:, 0], (x[:, 0] != 0).int())[1])
    return out


def _step_fns(model, opt, bf16: bool, device: torch.device, loss_of):
    def cast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(x):
        opt.zero_grad(set_to_none=True)
        with cast():
            loss = loss_of(model.train(), x)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer(x):
        with cast():
            return loss_of(model.eval(), x)

    return step, infer


def _median_seconds(fn, x, device, reps: int, warmup: int) -> tuple[float, float]:
    times = []
    for i in range(warmup + reps):
        _sync(device)
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(min(times))


def bench_train(geometry: str, device: torch.device, reps: int, authors_repo: Path | None) -> dict:
    cfg, _ = preset(geometry)
    x = brain_like_volumes(cfg.volume_shape).to(device)
    tokens = ViTAE(cfg).kept_mask(x.cpu()).sum(1).tolist()
    fns = _steppers(geometry, device, authors_repo)
    res = {"geometry": geometry, "tokens_per_scan": tokens, "variants": {}}
    for name, (step, infer) in fns.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        med, low = _median_seconds(step, x, device, reps, warmup=3)
        inf, _ = _median_seconds(infer, x, device, reps, warmup=1)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        res["variants"][name] = {"step_s": med, "step_min_s": low, "infer_s_per_scan": inf / len(x),
                                 "peak_gib": peak}
    store = torch.zeros((64, *x.shape[1:]), dtype=torch.float16, device=device)  # resident="float16"
    index = torch.tensor([5, 41], device=device)
    res["resident_gather_s"], _ = _median_seconds(lambda _: store.index_select(0, index).float(), None, device,
                                                  reps, warmup=2)
    steps = PAPER_EPOCHS * math.ceil(PAPER_TRAIN / 2)
    for v in res["variants"].values():
        v["paper_training_h"] = (steps * (v["step_s"] + res["resident_gather_s"])
                                 + PAPER_EPOCHS * PAPER_VAL * v["infer_s_per_scan"]) / 3600
    return res


def _write_cohort(work: Path, n: int, m: int, seed: int = 0) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    from udip_assets.genetics.plink import write_plink

    prefix = work / f"gwas_{n}x{m}"
    rng = np.random.default_rng(seed)
    iids = [f"s{i}" for i in range(n)]
    if not prefix.with_suffix(".bed").exists():
        maf = rng.uniform(0.01, 0.5, m).astype(np.float32)
        dosage = (rng.random((n, m), dtype=np.float32) < maf).astype(np.int8)
        dosage += rng.random((n, m), dtype=np.float32) < maf
        variants = pd.DataFrame({"snp": [f"rs{j}" for j in range(m)], "chrom": "1",
                                 "pos_bp": np.arange(1, m + 1) * 100, "a1": "A", "a2": "G"})
        write_plink(prefix, iids, dosage, variants)
    covariates = pd.DataFrame(rng.standard_normal((n, 18)), index=iids, columns=[f"c{k}" for k in range(18)])
    phenotypes = pd.DataFrame(rng.standard_normal((n, 128)) + covariates.to_numpy() @ rng.standard_normal((18, 128)),
                              index=iids, columns=[f"udip_{k:03d}" for k in range(128)])
    return prefix, phenotypes, covariates


def bench_gwas(device: torch.device, n: int, m: int, work: Path) -> dict:
    from udip_assets.genetics.genotype_stream import PlinkSource
    from udip_assets.genetics.gwas import GwasConfig, scan_associations

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prefix, pheno, covar = _write_cohort(work, n, m)
    res = {"samples": n, "snps": m, "dims": 128, "covariates": 18, "write_s": time.perf_counter() - t0,
           "cpu_threads": os.cpu_count(), "runs": {}}
    minp = {}
    for dev in ([str(device)] if device.type == "cpu" else [str(device), "cpu"]):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            t0 = time.perf_counter()
            out = scan_associations(PlinkSource(prefix), pheno, covar, GwasConfig(device=dev, maf_min=0.0),
                                    sumstats_path=Path(tmp) / "sumstats.parquet")
            wall = time.perf_counter() - t0
        minp[dev] = out.minp.set_index("snp")["p"]
        res["runs"][dev] = {"wall_s": wall, "s_per_snp": wall / m, "ukb_10M_snps_min": wall / m * UKB_SNPS / 60}
    if len(minp) == 2:
        a, b = (np.log10(v.sort_index().to_numpy()) for v in minp.values())
        res["max_abs_d_neg_log10_p"] = float(np.abs(a - b).max())
    return res


def render(label: str, r: dict) -> str:
    lines = [f"### {label}", "", f"Device: {r['device_name']}; torch {r['torch']}; {r['date']}.", "",
             f"Command: `{r['command']}`", ""]
    if "skipped" in r:
        return "\n".join(lines + [f"Skipped: {r['skipped']}", ""])
    t = r.get("train")
    if t:
        lines += [f"**Training step, {t['geometry']} geometry, batch 2** (tokens per scan {t['tokens_per_scan']}); "
                  f"resident float16 batch gather {1e3 * t['resident_gather_s']:.2f} ms.", "",
                  "| variant | step s (median, min) | vs authors | inference s/scan | peak GiB | paper training h |",
                  "|---|---:|---:|---:|---:|---:|"]
        ref = t["variants"].get("authors", t["variants"]["baseline"])["step_s"]
        for name, v in t["variants"].items():
            lines.append(f"| {name} | {v['step_s']:.4f}, {v['step_min_s']:.4f} | {ref / v['step_s']:.2f}x | "
                         f"{v['infer_s_per_scan']:.4f} | {v['peak_gib']:.2f} | {v['paper_training_h']:.2f} |")
        lines += ["", "('vs authors' is against the baseline, our code on the authors' path, when "
                  "--authors-repo was not given.)", ""]
    g = r.get("gwas")
    if g:
        lines += [f"**GWAS**, {g['samples']:,} samples x {g['snps']:,} SNPs x 128 dims, 18 covariates, "
                  f"{g['cpu_threads']} CPU threads:", "", "| products on | wall s | s per SNP | 10 M SNPs, min |",
                  "|---|---:|---:|---:|"]
        for dev, v in g["runs"].items():
            lines.append(f"| {dev} | {v['wall_s']:.1f} | {v['s_per_snp']:.2e} | {v['ukb_10M_snps_min']:.1f} |")
        if "max_abs_d_neg_log10_p" in g:
            lines += ["", f"max |d -log10 minP| between the two: {g['max_abs_d_neg_log10_p']:.1e}."]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parts", default="train,gwas", type=lambda v: set(v.split(",")))
    ap.add_argument("--geometry", default="paper", choices=["paper", "demo"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--authors-repo", type=Path)
    ap.add_argument("--gwas-samples", type=int, default=22_000)
    ap.add_argument("--gwas-snps", type=int, default=50_000)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "udip_bench_gpu")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--results-md", type=Path)
    ap.add_argument("--label")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    r = {"torch": torch.__version__, "device_name": "cpu"}
    if device.type == "cuda" and not torch.cuda.is_available():
        r["skipped"] = (f"no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                        "run on a GPU node, or pass --device cpu for a smoke run")
        print(f"bench_gpu: skipped: {r['skipped']}")
        return r
    if device.type == "cuda":
        r["device_name"] = torch.cuda.get_device_name(device)
    if "train" in args.parts:
        r["train"] = bench_train(args.geometry, device, args.reps, args.authors_repo)
    if "gwas" in args.parts:
        r["gwas"] = bench_gwas(device, args.gwas_samples, args.gwas_snps, args.work)
    write_result(r, args, argv, SECTION, "benchmarks/bench_gpu.py", f"{r['device_name']}", render,
                 show="train" if "train" in r else "gwas")
    print(render(args.label or r["device_name"], r))
    return r


if __name__ == "__main__":
    main()
