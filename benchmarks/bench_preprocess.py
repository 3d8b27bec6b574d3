"""Benchmark: preprocessing a scan vs merely reading it, and loading the cache vs the NIfTI.

Usage
-----
    .venv/bin/python benchmarks/bench_preprocess.py --scans DIR_OR_GLOB --n 100 \
        [--out benchmarks/results/preprocess.json] [--results-md benchmarks/RESULTS.md]
    .venv/bin/python benchmarks/bench_preprocess.py --make-fake 100 --resolution 1 ...

Two measurements, side by side on the same files in one run:

1. ``preprocess``: (a) a bare ``nibabel.load(path).get_fdata(dtype=np.float32)`` of each scan, and
   (b) :func:`udip_assets.imaging.preprocess.preprocess_scan` (decode once, validate, pad, mask,
   z-score, write the cache atomically). Per file the two run back to back, alternating which goes
   first, after one untimed warm-up; the files are read once beforehand so both see a warm page
   cache. Reported: scans/s for each, the overhead ``t_preprocess / t_bare - 1`` (target <= 10%),
   and the preprocessing time split into read+validate, normalise, write.
2. ``cache-load``: ms per scan to get a float32 volume from (a) the float16 ``.npy`` cache through
   ``load_preprocessed``, (a') the same file via ``np.load(mmap_mode='r').astype(float32)``,
   (b) a float32 ``.npy`` cache, (c) the original ``.nii.gz`` via nibabel.

Torch runs single-threaded (``--threads 1``) so that both sides of the comparison use one core.
``--make-fake N --resolution {1,2}`` writes N brain-like gzipped NIfTI files (smooth ellipsoid with
tissue-like contrast and noise on a zero background, float32, UK Biobank layout
``{eid}_20252_2_0/T1/T1_brain_to_MNI.nii.gz``) into a temporary folder, for a standalone run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from results_md import update_section  # benchmarks/results_md.py, beside this script

from udip_assets.imaging.grids import GRIDS, Grid
from udip_assets.imaging.nifti import validate_scan
from udip_assets.imaging.preprocess import PreprocessConfig, load_preprocessed, preprocess_scan

SECTION = "## Preprocessing"


def make_fake_brains(folder: Path, n: int, grid: Grid, seed: int = 0, compresslevel: int = 6) -> list[Path]:
    """Write ``n`` brain-like float32 scans on ``grid`` as gzipped NIfTI; return their paths.

    Notes
    -----
    An ellipsoid "brain" (~23% of the field of view, like a real brain in MNI space) with a brighter
    shell ("white matter"), darker core ("ventricles"), a smooth bias field, Gaussian noise (sd 4%)
    and an exactly zero background. gzip level 6 is zlib's default, which FSL writes.
    """
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in grid.shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    paths = []
    for i in range(n):
        scale = 1 + rng.normal(0, 0.03, 3).astype(np.float32)
        r2 = (x / (0.76 * scale[0])) ** 2 + (y / (0.80 * scale[1])) ** 2 + (z / (0.72 * scale[2])) ** 2
        vol = np.where(r2 < 0.15, 300.0, np.where(r2 < 0.6, 700.0, 550.0)).astype(np.float32)
        vol *= 1 + 0.1 * np.cos(2.0 * x + rng.uniform(0, 6)) * np.cos(1.5 * y)
        vol += rng.normal(0, 25, grid.shape).astype(np.float32)
        vol[(r2 > 1) | (vol < 0)] = 0
        eid = 1000000 + i
        path = folder / f"{eid}_20252_2_0" / "T1" / "T1_brain_to_MNI.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(nib.Nifti1Image(vol, grid.affine).to_bytes(), compresslevel))
        paths.append(path)
    return paths


def find_scans(pattern: str, n: int) -> list[Path]:
    """The first ``n`` ``.nii.gz`` files under a folder, or matching a glob (sorted)."""
    root = Path(pattern)
    found = sorted(root.rglob("*.nii.gz")) if root.is_dir() else sorted(Path(p) for p in glob.glob(pattern))
    if not found:
        raise SystemExit(f"--scans {pattern!r} matches no .nii.gz file; pass a folder or a glob")
    return found[:n]


def usable_scans(found: list[Path], grid: Grid, n: int) -> tuple[list[Path], list[str]]:
    """The first ``n`` scans that pass validation on ``grid`` (untimed), and the skipped ones' reasons."""
    keep, skipped = [], []
    for path in found:
        check = validate_scan(path, grid)
        if check.ok:
            keep.append(path)
        else:
            skipped.append(f"{path}: {check.status}")
        if len(keep) == n:
            break
    if not keep:
        raise SystemExit(f"no scan passes validation on {grid.name}; first failure: {skipped[:1]}")
    return keep, skipped


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_preprocess(scans: list[Path], grid: Grid, cache_dir: Path, cfg: PreprocessConfig) -> dict:
    """Bare nibabel read vs full preprocessing, interleaved per file."""
    def bare(p: Path):
        return lambda: nib.load(p).get_fdata(dtype=np.float32)

    bare(scans[0])()  # warm-up: imports, allocator, page cache
    preprocess_scan(scans[0], cache_dir / "warmup.npy", grid, cfg)
    t_bare, t_pre, parts = [], [], []
    for i, path in enumerate(scans):
        dst = cache_dir / f"{i:05d}.npy"
        if i % 2 == 0:
            t_bare.append(_timed(bare(path)))
        t0 = time.perf_counter()
        res = preprocess_scan(path, dst, grid, cfg)
        t_pre.append(time.perf_counter() - t0)
        parts.append((res.read_s, res.normalise_s, res.write_s))
        if i % 2 == 1:
            t_bare.append(_timed(bare(path)))
    med = [statistics.median(p[k] for p in parts) * 1e3 for k in range(3)]
    return {
        "n_scans": len(scans),
        "bare_read": {"total_s": sum(t_bare), "scans_per_s": len(scans) / sum(t_bare),
                      "median_ms": statistics.median(t_bare) * 1e3},
        "preprocess": {"total_s": sum(t_pre), "scans_per_s": len(scans) / sum(t_pre),
                       "median_ms": statistics.median(t_pre) * 1e3,
                       "median_read_validate_ms": med[0], "median_normalise_ms": med[1],
                       "median_write_ms": med[2]},
        "overhead": sum(t_pre) / sum(t_bare) - 1,
        "cache_mb": os.path.getsize(cache_dir / "00000.npy") / 2**20,
        "per_scan_ms": {"bare_read": [round(t * 1e3, 2) for t in t_bare],
                        "preprocess": [round(t * 1e3, 2) for t in t_pre],
                        "read_validate_normalise_write": [[round(x * 1e3, 2) for x in p] for p in parts]},
    }


def bench_cache_load(scans: list[Path], grid: Grid, f16_dir: Path, f32_dir: Path, patch) -> dict:
    """ms per scan to a float32 volume, per format, rotating the order per file."""
    for i, path in enumerate(scans):
        preprocess_scan(path, f32_dir / f"{i:05d}.npy", grid, PreprocessConfig(patch, "float32"))
    methods = {
        "npy_float16_load_preprocessed": lambda i, p: load_preprocessed(f16_dir / f"{i:05d}.npy"),
        "npy_float16_mmap_astype": lambda i, p: np.load(f16_dir / f"{i:05d}.npy", mmap_mode="r")
        .astype(np.float32),
        "npy_float32_np_load": lambda i, p: np.load(f32_dir / f"{i:05d}.npy"),
        "nii_gz_nibabel_get_fdata": lambda i, p: nib.load(p).get_fdata(dtype=np.float32),
    }
    names = list(methods)
    times: dict[str, list[float]] = {k: [] for k in names}
    for name in names:
        methods[name](0, scans[0])  # warm-up
    for i, path in enumerate(scans):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            times[name].append(_timed(lambda name=name, i=i, path=path: methods[name](i, path)))
    return {name: {"median_ms": statistics.median(ts) * 1e3, "scans_per_s": len(ts) / sum(ts)}
            for name, ts in times.items()}


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "numpy": np.__version__, "nibabel": nib.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def render_markdown(label: str, command: str, result: dict) -> str:
    """One '### label' subsection of RESULTS.md for this run."""
    m = result["machine"]
    lines = [f"### {label}", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), load average {m['loadavg']} before and "
             f"{result['machine_after']['loadavg']} after; Python {m['python']}, numpy {m['numpy']}, "
             f"nibabel {m['nibabel']}, torch {m['torch']} ({m['torch_threads']} thread); "
             f"{result['date']}; page cache warm.", "", f"Command: `{command}`", ""]
    pre = result.get("preprocess")
    if pre:
        lines += [f"Scans: {pre['n_scans']} ({result['grid']}), cache {result['cache_dtype']} "
                  f"{pre['cache_mb']:.1f} MB per scan.", "",
                  "| step | scans/s | median ms/scan |", "|---|---:|---:|",
                  "| bare `nibabel.load(p).get_fdata(dtype=float32)` | "
                  f"{pre['bare_read']['scans_per_s']:.2f} | {pre['bare_read']['median_ms']:.1f} |",
                  f"| `preprocess_scan` (read+validate, pad, mask, z-score, write) | "
                  f"{pre['preprocess']['scans_per_s']:.2f} | {pre['preprocess']['median_ms']:.1f} |", "",
                  f"Overhead of preprocessing over the bare read: **{pre['overhead'] * 100:+.1f}%** "
                  "(target <= +10%). Median split of `preprocess_scan`: read+validate "
                  f"{pre['preprocess']['median_read_validate_ms']:.1f} ms, normalise+pad "
                  f"{pre['preprocess']['median_normalise_ms']:.1f} ms, write "
                  f"{pre['preprocess']['median_write_ms']:.1f} ms.", ""]
    load = result.get("cache_load")
    if load:
        lines += ["Cache load (to a float32 array):", "", "| format | median ms/scan | scans/s |",
                  "|---|---:|---:|"]
        lines += [f"| {name} | {v['median_ms']:.2f} | {v['scans_per_s']:.1f} |" for name, v in load.items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def update_results_md(path: Path, label: str, body: str) -> None:
    """Replace (or add) the '### label' subsection of this benchmark's section of RESULTS.md."""
    update_section(path, SECTION, "benchmarks/bench_preprocess.py", label, body)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--scans", help="folder (searched for *.nii.gz) or glob of scans")
    src.add_argument("--make-fake", type=int, metavar="N", help="write N fake brains to a temp folder")
    ap.add_argument("--resolution", type=int, choices=(1, 2), default=1, help="grid of the scans (mm)")
    ap.add_argument("--generate-only", action="store_true",
                    help="with --make-fake and --workdir: write the fakes and stop")
    ap.add_argument("--n", type=int, default=100, help="number of scans to time")
    ap.add_argument("--mode", choices=("preprocess", "cache-load", "all"), default="all")
    ap.add_argument("--cache-dtype", choices=("float16", "float32"), default="float16")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--workdir", help="where fakes and caches go (default: a temp folder, removed)")
    ap.add_argument("--out", help="JSON results file")
    ap.add_argument("--results-md", help="update this RESULTS.md's Preprocessing section")
    ap.add_argument("--label", help="subsection title in RESULTS.md (default: derived)")
    args = ap.parse_args(argv)
    if args.generate_only and not (args.make_fake and args.workdir):
        ap.error("--generate-only needs --make-fake N and --workdir DIR (where the fakes are kept)")
    return args


def collect_scans(args: argparse.Namespace, work: Path) -> list[Path]:
    """The scans to time: fresh fakes, or the first --n scans under --scans that pass validation."""
    grid = GRIDS[args.resolution]
    if args.make_fake:
        t0 = time.perf_counter()
        scans = make_fake_brains(work / "scans", args.make_fake, grid)[: args.n]
        print(f"wrote {args.make_fake} fake {grid.name} scans to {work / 'scans'} "
              f"in {time.perf_counter() - t0:.1f} s")
        return scans
    scans, skipped = usable_scans(find_scans(args.scans, 10**9), grid, args.n)
    print(f"timing {len(scans)} scans on {grid.name}; skipped {len(skipped)} that fail validation")
    return scans


def run(args: argparse.Namespace, scans: list[Path], work: Path) -> dict:
    """Both measurements on ``scans``; caches go under ``work``."""
    grid = GRIDS[args.resolution]
    for p in scans:  # page cache warm for both sides
        p.read_bytes()
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "grid": grid.name,
              "cache_dtype": args.cache_dtype, "machine": machine()}
    if result["machine"]["loadavg"][0] > 1.5:
        print(f"WARNING: load average {result['machine']['loadavg']} > 1.5; timings are unreliable")
    cfg = PreprocessConfig(cache_dtype=args.cache_dtype)
    f16_dir, f32_dir = work / "cache", work / "cache32"
    f16_dir.mkdir(exist_ok=True)
    f32_dir.mkdir(exist_ok=True)
    if args.mode in ("preprocess", "all"):
        result["preprocess"] = bench_preprocess(scans, grid, f16_dir, cfg)
    if args.mode in ("cache-load", "all"):
        if "preprocess" not in result:
            for i, p in enumerate(scans):
                preprocess_scan(p, f16_dir / f"{i:05d}.npy", grid, cfg)
        result["cache_load"] = bench_cache_load(scans, grid, f16_dir, f32_dir, cfg.patch)
    result["machine_after"] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="udip_bench_pre_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        scans = collect_scans(args, work)
        if args.generate_only:
            return {}
        result = run(args, scans, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/bench_preprocess.py " + " ".join(argv)
    result["command"] = command
    source = f"fake brains ({args.make_fake} written)" if args.make_fake else f"scans {args.scans}"
    label = args.label or f"{result['grid']}, {source}, n={len(scans)}"
    body = render_markdown(label, command, result)
    print(body)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.results_md:
        update_results_md(Path(args.results_md), label, body)
    return result


if __name__ == "__main__":
    main()
