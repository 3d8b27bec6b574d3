"""Benchmark: the checkpoint sweep's GWAS + loci, K checkpoints in one pass vs one discovery per checkpoint.

Usage
-----
    .venv/bin/python benchmarks/bench_sweep.py [--samples 2000] [--snps 30000] [--phenotypes 128] \
        [--checkpoints 2 4] [--reps 2] [--work /tmp/udip_bench_sweep] \
        [--out benchmarks/results/sweep.json] [--results-md benchmarks/RESULTS.md]

Data: ``bench_gwas.generate``'s founder-mosaic genotypes, phenotypes and covariates (the
'complete' fileset). The K phenotype sets stand for K checkpoints' UDIPs: the benchmark's
phenotypes plus independent noise of SD 0.5 per set, so each set finds its own loci.

Baseline: what the sweep did before, :func:`~udip_assets.cohort.model_selection.loci_of_sample`
once per checkpoint (a GWAS pass over every chromosome and an LD set-up each). Ours:
:func:`~udip_assets.cohort.model_selection.loci_of_samples`, one pass with the K sets side by side
in one wider product and one LD set-up. Both in this process, alternating, on the same threads;
the loci of every set must be identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from bench_gwas import generate, machine  # beside this script
from results_md import write_result

from udip_assets.cohort.gwas_inputs import GwasSample
from udip_assets.cohort.model_selection import loci_of_sample, loci_of_samples
from udip_assets.genetics.clump import ClumpConfig
from udip_assets.genetics.design import read_plink2_table
from udip_assets.genetics.gwas import GwasConfig

SECTION = "## Checkpoint sweep"


def _samples(work: Path, k: int) -> dict[str, GwasSample]:
    pheno = read_plink2_table(work / "pheno.txt")
    cov = read_plink2_table(work / "covar.txt").loc[pheno.index]
    rng = np.random.default_rng(k)
    return {f"epoch_{10 * (i + 1)}": GwasSample(pheno + rng.normal(0, 0.5, pheno.shape), cov, {})
            for i in range(k)}


def _time(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def run(work: Path, k: int, reps: int, threads: int) -> dict:
    samples = _samples(work, k)
    prefix = work / "complete"
    gwas = GwasConfig(threads=threads, maf_min=0.0, call_rate_min=0.0)
    clump = ClumpConfig(sig_p=5e-8 / next(iter(samples.values())).phenotypes.shape[1])
    base, ours = [], []
    for _ in range(reps):
        t, separate = _time(lambda: {name: loci_of_sample(s, prefix, gwas, clump) for name, s in samples.items()})
        base.append(t)
        t, together = _time(lambda: loci_of_samples(samples, prefix, gwas, clump))
        ours.append(t)
    same = all(separate[n][1] == together[n][1] and separate[n][0]["rsID"].tolist() == together[n][0]["rsID"].tolist()
               for n in samples)
    return {"checkpoints": k, "baseline_s": [round(v, 2) for v in base], "ours_s": [round(v, 2) for v in ours],
            "speedup_median": round(float(np.median(base) / np.median(ours)), 2),
            "loci": {n: len(v[0]) for n, v in together.items()}, "identical_loci": bool(same)}


def render_markdown(label: str, r: dict) -> str:
    m, p = r["machine"], r["params"]
    lines = [f"### {label}", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), load average {m['loadavg']}; Python {m['python']}, "
             f"numpy {m['numpy']}; {r['date']}.", "", f"Command: `{r['command']}`", "",
             f"Data: {p['samples']:,} samples x {p['snps']:,} SNPs (founder-mosaic LD) x {p['phenotypes']} dims per "
             f"checkpoint, {r['n_covariates']} covariates; {r['threads']} threads.", "",
             "| checkpoints | one discovery per checkpoint, s | one pass, s | speed-up (median) | loci per checkpoint "
             "| identical loci |", "|---:|---:|---:|---:|---|---|"]
    for c in r["cases"]:
        base, ours = ", ".join(map(str, c["baseline_s"])), ", ".join(map(str, c["ours_s"]))
        loci = ", ".join(map(str, c["loci"].values()))
        lines.append(f"| {c['checkpoints']} | {base} | {ours} | **{c['speedup_median']:.2f}x** | {loci} | "
                     f"{'yes' if c['identical_loci'] else '**no**'} |")
    lines += ["", " ".join(NOTES.split()), ""]
    return "\n".join(lines)


NOTES = """Notes. Both paths run the GWAS of every SNP x dim with covariates and FUMA clumping of the
minP. The one-pass path decodes and centres each genotype chunk once for all checkpoints, runs one
product G [Y_1 | ... | Y_K | Q] instead of K products with Q repeated, and builds the LD calculator
once; the statistics, p-values and clumping of each checkpoint are the same work as before. The
encoding of the scans by each checkpoint (the sweep's other cost) is not part of this benchmark."""


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--snps", type=int, default=30000)
    ap.add_argument("--phenotypes", type=int, default=128)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/udip_bench_sweep"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--results-md", type=Path, default=None)
    ap.add_argument("--label", default=None)
    args = ap.parse_args(argv)
    meta = generate(args.work, args.samples, args.snps, args.phenotypes, 0)
    r = {"params": {"samples": args.samples, "snps": args.snps, "phenotypes": args.phenotypes},
         "machine": machine(), "threads": args.threads, "n_covariates": meta["n_covariates"],
         "cases": [run(args.work, k, args.reps, args.threads) for k in args.checkpoints]}
    write_result(r, args, argv, SECTION, "benchmarks/bench_sweep.py",
                 f"N={args.samples:,}, M={args.snps:,}, P={args.phenotypes}, CPU",
                 render_markdown, show="cases")
    return r


if __name__ == "__main__":
    main()
