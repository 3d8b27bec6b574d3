"""Benchmark: the GWAS engine (``udip gwas``) against PLINK 2 ``--glm`` on the same files, side by side.

Usage
-----
    .venv/bin/python benchmarks/bench_gwas.py [--samples 5000] [--snps 100000] [--phenotypes 128] \
        [--threads 2] [--work /tmp/udip_bench_gwas] [--plink2-missing-snps 5000] \
        [--out benchmarks/results/gwas.json] [--results-md benchmarks/RESULTS.md]

Data (generated once into ``--work``, reused by later runs with the same sizes):

* genotypes with realistic LD: each of the 2N haplotypes is a mosaic of 64 founder haplotypes
  (switching founder with probability 0.02 per SNP, i.e. LD blocks of ~50 SNPs, plus 0.5 %
  miscopies), allele frequencies from Beta(0.6, 0.6) folded to MAF >= 0.02, one chromosome;
* 128 correlated phenotypes (a random loading of 16 latent factors plus noise, like UDIPs) with
  40 causal SNPs acting on 1-3 phenotypes each (0.15-0.6 per allele, phenotype sd ~2.2), and
  ~18 covariates (age, sex, 10 PCs that carry part of the genotype signal, two ancestry dummies,
  an inverted-CNR measure, three centre dummies), written as PLINK 2 ``--pheno`` / ``--covar`` files;
* the complete genotypes as UK Biobank ships imputed data, BGEN v1.2 with zlib and 8-bit
  probabilities, exported by ``plink2 --export bgen-1.2 bits=8 ref-first``; both tools read it
  (``udip gwas --bgen``, ``plink2 --bgen ... ref-first``), which puts a number on decoding;
* the same genotypes with 1 % of calls set missing at random, as a second fileset, and the first
  ``--plink2-missing-snps`` SNPs of it as a third (PLINK 2 is ~180x slower with missing calls, so
  it runs on that subset, and the full-size time is projected linearly; ours runs on both).

Each tool runs as its own process, the way a user runs it; wall time from the parent, peak RSS
from ``os.wait4``. Ours: ``udip gwas --threads T --maf 0 --call-rate 0`` (all outputs: Parquet
sumstats of every test, minP TSV, hits, Manhattan and QQ PNGs, JSON summary). PLINK 2:
``--glm hide-covar log10 --covar-variance-standardize --threads T`` (a text table per phenotype).
Accuracy: every SNP x phenotype joined in DuckDB; max |Δ -log10 p|, and the SNPs with minP below
5e-8/128 from each tool.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_md import update_section  # benchmarks/results_md.py, beside this script

from udip_assets.genetics.design import write_plink2_table
from udip_assets.genetics.plink import BED_MAGIC, _encode_bed_rows

SECTION = "## GWAS engine"
SIG_P = 5e-8
CHUNK = 4096


def _founder_mosaic(rng: np.random.Generator, n_haps: int, n_snps: int, n_founders: int = 64,
                    switch: float = 0.02, miscopy: float = 0.005):
    """Yield (start, haplotypes (n_haps, c) uint8) chunks of a founder-mosaic haplotype panel."""
    carry = rng.integers(0, n_founders, n_haps)
    for start in range(0, n_snps, CHUNK):
        c = min(CHUNK, n_snps - start)
        freq = rng.beta(0.6, 0.6, c)
        freq = np.clip(np.where(freq > 0.5, 1 - freq, freq), 0.02, 0.5)
        founders = (rng.random((n_founders, c)) < freq).astype(np.uint8)
        jumps = rng.random((n_haps, c)) < switch
        draw = rng.integers(0, n_founders, (n_haps, c), dtype=np.int16)
        draw[:, 0] = np.where(jumps[:, 0], draw[:, 0], carry)
        jumps[:, 0] = True
        last = np.maximum.accumulate(np.where(jumps, np.arange(c), 0), axis=1)
        which = np.take_along_axis(draw, last, axis=1)
        carry = which[:, -1].astype(np.int64)
        haps = founders[which, np.arange(c)]
        flip = rng.random((n_haps, c)) < miscopy
        yield start, np.where(flip, 1 - haps, haps).astype(np.uint8)


def generate(work: Path, n: int, m: int, p: int, m_sub: int, seed: int = 1) -> dict:
    """Write the filesets, phenotypes and covariates (skipped when ``work/meta.json`` matches)."""
    meta_path = work / "meta.json"
    want = {"samples": n, "snps": m, "phenotypes": p, "missing_subset_snps": m_sub, "seed": seed, "version": 2}
    if meta_path.exists() and json.loads(meta_path.read_text()).get("params") == want:
        return json.loads(meta_path.read_text())
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    iids = [f"S{k:05d}" for k in range(n)]
    fam = "".join(f"{i} {i} 0 0 0 -9\n" for i in iids)
    variants = pd.DataFrame({"chrom": 1, "snp": [f"rs{j + 1}" for j in range(m)], "cm": 0,
                             "pos_bp": 1_000 + 100 * np.arange(m), "a1": "A", "a2": "G"})
    names = {"complete": m, "missing": m, "missing_sub": m_sub}
    for name, count in names.items():
        (work / f"{name}.fam").write_text(fam)
        variants.iloc[:count].to_csv(work / f"{name}.bim", sep="\t", header=False, index=False)
    beds = {name: open(work / f"{name}.bed", "wb") for name in names}
    for fh in beds.values():
        fh.write(BED_MAGIC)
    causal = np.sort(rng.choice(m, 40, replace=False))
    causal_g = np.zeros((n, causal.size))
    pc_signal = np.zeros((n, 10))
    pc_loadings = rng.standard_normal((m, 10)) / np.sqrt(m)
    for start, haps in _founder_mosaic(rng, 2 * n, m):
        g = (haps[:n] + haps[n:]).astype(np.float32)
        c = g.shape[1]
        sel = (causal >= start) & (causal < start + c)
        causal_g[:, sel] = g[:, causal[sel] - start]
        pc_signal += (g - g.mean(0)) @ pc_loadings[start:start + c]
        beds["complete"].write(_encode_bed_rows(g))
        g_missing = np.where(rng.random(g.shape) < 0.01, np.nan, g).astype(np.float32)
        beds["missing"].write(_encode_bed_rows(g_missing))
        if start < m_sub:
            beds["missing_sub"].write(_encode_bed_rows(g_missing[:, :max(0, min(c, m_sub - start))]))
    for fh in beds.values():
        fh.close()
    centre = rng.integers(0, 4, n)
    ancestry = rng.choice(3, n, p=[0.9, 0.06, 0.04])
    cov = pd.DataFrame({"age": rng.normal(64, 7.5, n), "sex": rng.integers(0, 2, n).astype(float)}, index=iids)
    pcs = pc_signal / pc_signal.std(0) + 0.5 * rng.standard_normal((n, 10))
    for k in range(10):
        cov[f"pc{k + 1}"] = pcs[:, k]
    for level in (1, 2):
        cov[f"ancestry_{level}"] = (ancestry == level).astype(float)
    cov["inv_cnr"] = 1 / rng.gamma(20, 0.1, n)
    for level in (1, 2, 3):
        cov[f"centre_{level}"] = (centre == level).astype(float)
    latent = rng.standard_normal((n, 16))
    y = latent @ rng.standard_normal((16, p)) * 0.5 + rng.standard_normal((n, p))
    y += 0.02 * (cov[["age"]].to_numpy() - 64) + 0.3 * cov[["sex"]].to_numpy()
    for j in range(causal.size):
        dims = rng.choice(p, rng.integers(1, 4), replace=False)
        gj = causal_g[:, j] - causal_g[:, j].mean()
        y[:, dims] += rng.choice([-1, 1]) * rng.uniform(0.15, 0.6) * gj[:, None]
    write_plink2_table(work / "pheno.txt", pd.DataFrame(y, index=iids, columns=[f"udip_{d:03d}" for d in range(p)]))
    write_plink2_table(work / "covar.txt", cov)
    meta = {"params": want, "n_covariates": cov.shape[1], "causal_snps": [f"rs{j + 1}" for j in causal],
            "generate_s": round(time.perf_counter() - t0, 1)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``plink2`` is a shell script that runs the real binary)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return found


def _peak_rss_mb(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Poll VmHWM (peak RSS) of the child's process tree; report the largest single process.

    ``ru_maxrss`` from ``wait4`` would not do: Linux carries this process's own peak over the fork
    and exec into the child's figure.
    """
    peaks: dict[int, float] = {}
    while not stop.is_set():
        for p in _descendants(pid):
            try:
                with open(f"/proc/{p}/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            peaks[p] = max(peaks.get(p, 0.0), int(line.split()[1]) / 1024)
                            break
            except (OSError, ValueError):
                continue
        stop.wait(0.02)
    out.append(max(peaks.values(), default=float("nan")))


def run_process(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` to completion: wall seconds, CPU seconds and the child's peak RSS (MB)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        stop, peak = threading.Event(), []
        watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, stop, peak), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        watcher.join()
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}); see {log}:\n{log.read_text()[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": peak[0], "cpu_s": usage.ru_utime + usage.ru_stime,
            "command": " ".join(cmd)}


def export_bgen(work: Path, fileset: str) -> Path:
    """``fileset`` as UK Biobank ships imputed data (BGEN v1.2, zlib, 8 bits), written by PLINK 2 once.

    'ref-first' puts the .bim's A2 first, so the second allele, which both tools count by default
    for a BGEN (``udip gwas --bgen-a1 second``; ``plink2 --bgen ... ref-first``), is the .bed's A1.
    """
    prefix = work / f"{fileset}_bgen"
    if not (prefix.with_suffix(".bgen").exists() and prefix.with_suffix(".sample").exists()):
        subprocess.run([shutil.which("plink2") or "plink2", "--bfile", str(work / fileset), "--export",
                        "bgen-1.2", "bits=8", "ref-first", "--out", str(prefix)], check=True, capture_output=True)
    return prefix


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _genotype_args(work: Path, fileset: str, bgen: bool, plink: bool = False) -> list[str]:
    if not bgen:
        return ["--bfile", str(work / fileset)]
    prefix = export_bgen(work, fileset)
    return ["--bgen", str(prefix.with_suffix(".bgen")), *(["ref-first"] if plink else []),
            "--sample", str(prefix.with_suffix(".sample"))]


def run_ours(work: Path, fileset: str, threads: int, bgen: bool = False, device: str = "cpu") -> dict:
    tag = f"{fileset}{'_bgen' if bgen else ''}{'' if device == 'cpu' else '_' + device.replace(':', '')}"
    out = work / f"ours_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    udip = str(Path(sys.executable).with_name("udip"))
    cmd = [udip, "gwas", *_genotype_args(work, fileset, bgen), "--pheno", str(work / "pheno.txt"),
           "--covar", str(work / "covar.txt"), "--out", str(out), "--maf", "0", "--call-rate", "0",
           "--threads", str(threads), "--device", device]
    res = run_process(cmd, work / f"ours_{tag}.log")
    res["summary"] = json.loads((out / "summary.json").read_text())
    res["out"] = str(out)
    return res


def run_plink2(work: Path, fileset: str, threads: int, bgen: bool = False) -> dict:
    tag = f"{fileset}{'_bgen' if bgen else ''}"
    out = work / f"plink2_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = [shutil.which("plink2") or "plink2", *_genotype_args(work, fileset, bgen, plink=True),
           "--pheno", str(work / "pheno.txt"),
           "--covar", str(work / "covar.txt"), "--covar-variance-standardize", "--glm", "hide-covar", "log10",
           "--threads", str(threads), "--out", str(out / "plink")]
    res = run_process(cmd, work / f"plink2_{tag}.log")
    res["out"] = str(out)
    return res


def accuracy(ours_dir: str, plink_dir: str, n_dims: int) -> dict:
    """Join every SNP x phenotype of the two tools (DuckDB) and compare -log10 p and significant SNPs."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"""CREATE TEMP TABLE plink AS SELECT ID AS snp,
                      CAST(regexp_extract(filename, 'udip_(\\d+)\\.glm', 1) AS INTEGER) AS dim,
                      LOG10_P AS lp FROM read_csv('{plink_dir}/plink.udip_*.glm.linear', delim='\t',
                      header=true, filename=true, nullstr='NA')""")
    con.execute(f"""CREATE TEMP TABLE ours AS SELECT snp, dim, neg_log10_p AS lp
                    FROM read_parquet('{ours_dir}/sumstats/*.parquet')""")
    row = con.execute("""SELECT count(*), max(abs(o.lp - p.lp)), quantile_cont(abs(o.lp - p.lp), 0.99),
                                (SELECT count(*) FROM ours), (SELECT count(*) FROM plink)
                         FROM ours o JOIN plink p USING (snp, dim)""").fetchone()
    threshold = -np.log10(SIG_P / n_dims)
    sig = {name: {r[0] for r in con.execute(
        f"SELECT snp FROM {name} GROUP BY snp HAVING max(lp) >= {threshold}").fetchall()}
        for name in ("ours", "plink")}
    return {"joined": row[0], "ours_rows": row[3], "plink_rows": row[4], "max_abs_dlog10p": row[1],
            "p99_abs_dlog10p": row[2], "n_significant_ours": len(sig["ours"]),
            "n_significant_plink": len(sig["plink"]), "significant_identical": sig["ours"] == sig["plink"]}


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    version = subprocess.run(["plink2", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "loadavg": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "numpy": np.__version__, "plink2": version}


def render_markdown(label: str, r: dict) -> str:
    m, p = r["machine"], r["params"]
    tests = p["snps"] * p["phenotypes"]
    lines = [f"### {label}", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), load average {m['loadavg']} before and "
             f"{r['machine_after']['loadavg']} after; Python {m['python']}, numpy {m['numpy']}, {m['plink2']}; "
             f"{r['date']}.", "", f"Command: `{r['command']}`", "",
             f"Data: {p['samples']:,} samples x {p['snps']:,} SNPs (founder-mosaic LD) x {p['phenotypes']} "
             f"phenotypes, {r['n_covariates']} covariates; {args_threads(r)} threads for both tools.", "",
             "| data | tool | SNPs run | wall s | peak RSS MB | tests/s | speed-up | max abs d(-log10 p) "
             "| significant SNPs (ours / PLINK 2, identical) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for case in r["cases"]:
        ours, plink, acc = case["ours"], case["plink2"], case["accuracy"]
        speed = case["speedup"]
        lines.append(f"| {case['name']} | udip gwas | {case['snps_ours']:,} | {ours['wall_s']:.1f} | "
                     f"{ours['peak_rss_mb']:.0f} | {case['snps_ours'] * p['phenotypes'] / ours['wall_s']:.3g} | "
                     f"**{speed:.1f}x**{case.get('speedup_note', '')} | {acc['max_abs_dlog10p']:.1e} | "
                     f"{acc['n_significant_ours']} / {acc['n_significant_plink']}, "
                     f"{'yes' if acc['significant_identical'] else '**no**'} |")
        lines.append(f"| {case['name']} | plink2 --glm | {case['snps_plink2']:,} | {plink['wall_s']:.1f} | "
                     f"{plink['peak_rss_mb']:.0f} | {case['snps_plink2'] * p['phenotypes'] / plink['wall_s']:.3g} "
                     "| 1x | | |")
    by_name = {case["name"]: case for case in r["cases"]}
    if {"complete", "complete, BGEN 1.2 8-bit"} <= set(by_name):
        bed, bgen = by_name["complete"]["ours"]["wall_s"], by_name["complete, BGEN 1.2 8-bit"]["ours"]["wall_s"]
        lines += ["", f"BGEN: ours {bgen:.1f} s against {bed:.1f} s from the .bed, i.e. decoding the BGEN costs "
                  f"{bgen - bed:+.1f} s per {p['snps']:,} SNPs x {p['samples']:,} samples beside the products."]
    lines += ["", f"Targets: >= 10x on complete data, >= 50x with 1 % missing calls, identical significant SNPs, "
              f"max |d -log10 p| <= 1e-4, peak RSS < 1.5 GB. ({tests:,} tests per full run.)", ""]
    lines += [" ".join(NOTES.split()), ""]
    return "\n".join(lines)


def args_threads(r: dict) -> int:
    return r["threads"]


NOTES = """Notes. Both tools read the same .bed/.bim/.fam and PLINK 2 text phenotype/covariate files
and write every SNP x phenotype result (ours: zstd Parquet, plus minP TSV, hits, Manhattan and QQ
PNGs; PLINK 2: one text table per phenotype). Wall time includes process start and all output.
Ours runs with `--maf 0 --call-rate 0` so that both tools test the same SNPs. With 1 % missing
calls PLINK 2 runs only on the first SNPs of the fileset (the 'missing, subset' row, both tools on
the same file); the full-size 'missing' speed-up divides PLINK 2's subset time, scaled linearly to
the full SNP count, by ours on the full file (marked 'projected'), and its accuracy columns come
from the subset."""


def update_results_md(path: Path, label: str, body: str) -> None:
    """Replace (or add) the '### label' subsection of this benchmark's section of RESULTS.md."""
    update_section(path, SECTION, "benchmarks/bench_gwas.py", label, body)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--snps", type=int, default=100_000)
    ap.add_argument("--phenotypes", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plink2-missing-snps", type=int, default=5000,
                    help="PLINK 2 runs the missing-call data on this many SNPs (projected to the full count)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/udip_bench_gwas"))
    ap.add_argument("--out", help="JSON results file")
    ap.add_argument("--results-md", help="update this RESULTS.md's GWAS section")
    ap.add_argument("--label", default="N=5,000, M=100,000, P=128, CPU")
    ap.add_argument("--cases", default="complete,cuda,bgen,missing", type=lambda v: set(v.split(",")),
                    help="comma-separated cases: complete, cuda (ours with the products on the GPU; "
                         "skipped without one), bgen (the complete data as BGEN 1.2 8-bit, both tools), "
                         "missing (1 %% missing calls, subset and full)")
    args = ap.parse_args(argv)
    if shutil.which("plink2") is None:
        sys.exit("plink2 is not on PATH: sudo apt-get install plink2")
    meta = generate(args.work, args.samples, args.snps, args.phenotypes, args.plink2_missing_snps)
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "command": "python benchmarks/bench_gwas.py " + " ".join(argv), "params": meta["params"],
              "n_covariates": meta["n_covariates"], "threads": args.threads, "cases": []}
    n_sub = min(args.plink2_missing_snps, args.snps)
    cases = [("complete", "complete", "complete", "complete", False, "cpu"),
             ("cuda", "complete, products on CUDA", "complete", "complete", False, "cuda"),
             ("bgen", "complete, BGEN 1.2 8-bit", "complete", "complete", True, "cpu"),
             ("missing", "1 % missing, subset", "missing_sub", "missing_sub", False, "cpu"),
             ("missing", "1 % missing", "missing", None, False, "cpu")]
    for key, name, fileset, plink_set, bgen, device in cases:
        if key not in args.cases:
            continue
        if device != "cpu" and not _cuda_available():
            print(f"{name}: skipped, torch sees no CUDA device on this machine", flush=True)
            continue
        ours = run_ours(args.work, fileset, args.threads, bgen=bgen, device=device)
        print(f"{name}: ours {ours['wall_s']:.1f} s, {ours['peak_rss_mb']:.0f} MB", flush=True)
        case = {"name": name, "ours": ours, "snps_ours": ours["summary"]["n_variants"]}
        if plink_set is not None:
            plink = run_plink2(args.work, plink_set, args.threads, bgen=bgen)
            print(f"{name}: plink2 {plink['wall_s']:.1f} s, {plink['peak_rss_mb']:.0f} MB", flush=True)
            case.update(plink2=plink, snps_plink2=n_sub if plink_set == "missing_sub" else args.snps,
                        accuracy=accuracy(ours["out"], plink["out"], args.phenotypes))
            case["speedup"] = plink["wall_s"] / ours["wall_s"]
        else:
            sub = result["cases"][-1]
            case.update(plink2=sub["plink2"], snps_plink2=sub["snps_plink2"], accuracy=sub["accuracy"])
            projected = sub["plink2"]["wall_s"] * args.snps / n_sub
            case["speedup"] = projected / ours["wall_s"]
            case["speedup_note"] = f" (projected: PLINK 2 {projected:.0f} s)"
        print(json.dumps(case["accuracy"]), flush=True)
        result["cases"].append(case)
    result["machine_after"] = machine()
    body = render_markdown(args.label, result)
    print(body)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.results_md:
        update_results_md(Path(args.results_md), args.label, body)
    return result


if __name__ == "__main__":
    main()
