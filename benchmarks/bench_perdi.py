"""Benchmark: PerDI decoding cost (seconds per subject per dim) and peak memory, demo and paper geometry.

Usage
-----
    .venv/bin/python benchmarks/bench_perdi.py [--geometry demo paper] [--subjects 4] [--dims 5] \
        [--batch-size 2] [--threads 1] [--device cpu] [--out benchmarks/results/perdi.json] \
        [--results-md benchmarks/RESULTS.md]

For each geometry a randomly initialised ViT-AE of that preset (``demo``: 98x112x98 padded 2 mm
volumes, 7x7x7 patches; ``paper``: 182x224x182 at 1 mm, 13x14x13) runs
:func:`udip_assets.interpret.perdi.perdi_t_maps` on ``--subjects`` random UDIPs and ``--dims``
dims, decoding every patch of the MNI152 template brain (:func:`~udip_assets.interpret.perdi.template_kept`
of ``load_anatomy(grid).brain_mask``). Each subject costs ``1 + n_dims`` decodes (the original
once, each perturbed dim once): seconds per subject per dim is ``wall / (n_subjects x n_dims)``,
seconds per decode ``wall / (n_subjects x (1 + n_dims))``, and the paper's run (500 subjects,
10 dims: 5500 decodes) is extrapolated from the latter. Then one
:func:`~udip_assets.interpret.perdi.finish_map` (mask, Gaussian sigma 1, mask) is timed.

Memory: each geometry runs in a fresh subprocess that loads a precomputed mask (the template
anatomy, ~0.9 GB to build at 1 mm, is built in the parent), so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is imports + model + PerDI; ``perdi_peak_mb`` is
that peak minus the RSS just before the PerDI call (the running sums, one batch of decodes, the
output maps).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_md import update_section  # benchmarks/results_md.py, beside this script

from udip_assets.imaging.grids import MNI152_1MM, MNI152_2MM
from udip_assets.model.config import preset

SECTION = "## PerDI"
GEOMETRIES = {"demo": MNI152_2MM, "paper": MNI152_1MM}
PAPER_RUN = (500, 10)  # subjects, dims: the paper's five top dims plus five of novel loci


def _rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(geometry: str, mask_path: str, n_subjects: int, n_dims: int, batch_size: int, device: str) -> dict:
    """One geometry, in this (fresh) process: time perdi_t_maps and finish_map, read the peak RSS."""
    from udip_assets.interpret.perdi import finish_map, perdi_t_maps, template_kept
    from udip_assets.model.vit_ae import ViTAE

    cfg = preset(geometry)[0]
    mask = np.load(mask_path)
    torch.manual_seed(0)
    model = ViTAE(cfg).eval()
    udips = np.random.default_rng(0).normal(size=(n_subjects, cfg.enc_dim)).astype(np.float32)
    dims = list(range(0, 2 * n_dims, 2))
    kept = template_kept(mask, cfg)
    with torch.no_grad():  # warm-up: one decode of one subject
        model.to(device).decode(torch.as_tensor(udips[:1], device=device),
                                torch.as_tensor(kept, device=device)[None])
    rss_before = _rss_mb()
    res = perdi_t_maps(model, udips, dims, np.ones(cfg.enc_dim), mask, batch_size=batch_size, device=device,
                       progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    finish_map(res.t_maps[0], mask)
    finish_s = time.perf_counter() - t0
    per_subject_dim = res.seconds / (n_subjects * n_dims)
    s_per_decode = res.seconds / (n_subjects * (1 + n_dims))
    return {"geometry": geometry, "volume": list(cfg.volume_shape), "grid": list(mask.shape),
            "patches_decoded": int(kept.sum()), "n_patches": cfg.n_patches, "n_subjects": n_subjects,
            "n_dims": n_dims, "batch_size": batch_size, "device": device, "wall_s": res.seconds,
            "s_per_subject_per_dim": per_subject_dim,
            "s_per_decode": s_per_decode,
            "paper_run_estimate_h": s_per_decode * PAPER_RUN[0] * (1 + PAPER_RUN[1]) / 3600,
            "finish_map_s": finish_s, "rss_before_perdi_mb": rss_before, "peak_rss_mb": peak_mb,
            "perdi_peak_mb": peak_mb - rss_before}


def run_geometry(geometry: str, args: argparse.Namespace, folder: Path) -> dict:
    """Build the template mask here, then measure in a fresh subprocess."""
    from udip_assets.imaging.anatomy import load_anatomy

    mask_path = folder / f"mask_{geometry}.npy"
    np.save(mask_path, np.asarray(load_anatomy(GEOMETRIES[geometry]).brain_mask))
    cmd = [sys.executable, __file__, "--worker", geometry, str(mask_path), "--subjects", str(args.subjects),
           "--dims", str(args.dims), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "loadavg": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__}


def render_markdown(label: str, command: str, result: dict) -> str:
    """One '### label' subsection of RESULTS.md: the table and the machine."""
    m = result["machine"]
    lines = [f"### {label}", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), load average {m['loadavg']} before and "
             f"{result['machine_after']['loadavg']} after; Python {m['python']}, torch {m['torch']} "
             f"({result['threads']} threads); {result['date']}.", "", f"Command: `{command}`", "",
             "| geometry | volume | patches decoded | subjects x dims | batch | s / subject / dim | s / decode "
             "| 500 x 10 estimate (h) | finish_map s | peak RSS MB | PerDI peak MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["geometries"].values():
        lines.append(f"| {r['geometry']} | {'x'.join(map(str, r['volume']))} | {r['patches_decoded']} / "
                     f"{r['n_patches']} | {r['n_subjects']} x {r['n_dims']} | {r['batch_size']} | "
                     f"{r['s_per_subject_per_dim']:.3f} | {r['s_per_decode']:.3f} | "
                     f"{r['paper_run_estimate_h']:.2f} | {r['finish_map_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['perdi_peak_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--geometry", nargs="+", choices=sorted(GEOMETRIES), default=["demo", "paper"])
    ap.add_argument("--subjects", type=int, default=4, help="subjects (UDIP rows)")
    ap.add_argument("--dims", type=int, default=5, help="perturbed dims")
    ap.add_argument("--batch-size", type=int, default=2, help="subjects per decoder call")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="JSON results file")
    ap.add_argument("--results-md", help="update this RESULTS.md's PerDI section")
    ap.add_argument("--label", default="random weights, CPU", help="subsection title")
    ap.add_argument("--worker", nargs=2, metavar=("GEOMETRY", "MASK_NPY"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        res = worker(args.worker[0], args.worker[1], args.subjects, args.dims, args.batch_size, args.device)
        print(json.dumps(res))
        return res
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "threads": args.threads, "command": "python benchmarks/bench_perdi.py " + " ".join(argv),
              "geometries": {}}
    with tempfile.TemporaryDirectory() as folder:
        for geometry in args.geometry:
            result["geometries"][geometry] = run_geometry(geometry, args, Path(folder))
            print(json.dumps(result["geometries"][geometry]), flush=True)
    result["machine_after"] = machine()
    body = render_markdown(args.label, result["command"], result)
    print(body)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.results_md:
        update_section(Path(args.results_md), SECTION, "benchmarks/bench_perdi.py", args.label, body)
    return result


if __name__ == "__main__":
    main()
