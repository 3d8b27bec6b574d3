"""Write a synthetic cohort folder: genotypes, covariates, kinship, genes, truth, T1 scans.

See :mod:`udip_assets.cohort.synthetic` for the model. Files are written atomically; scans that
already exist from an interrupted run are kept (each is a pure function of the seed and the
subject), and ``cohort.yaml`` is written last, so its presence marks a complete cohort.
"""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from udip_assets.atomic import atomic_path, write_tsv_atomic
from udip_assets.cohort.spec import COHORT_FILE, UKBB_T1_RELPATH, CohortSpec, load_cohort, write_cohort_yaml
from udip_assets.cohort.synthetic import (
    CENTRES,
    RESIDUAL_BIAS,
    WARP_AMPLITUDE_MM,
    SynthConfig,
    choose_causal_snps,
    image_variance_explained,
    plant_effects,
    write_truth,
)
from udip_assets.cohort.truth_check import load_truth
from udip_assets.errors import UdipConfigError
from udip_assets.genetics.annotations import demo_gwas_catalog, reference_loci_from_truth
from udip_assets.genetics.pca import genetic_pcs
from udip_assets.genetics.plink import read_bim, write_plink
from udip_assets.genetics.relatedness import related_pairs_table, write_ukb_rel
from udip_assets.genetics.synth_genotypes import GenotypeSimConfig, simulate_genotypes
from udip_assets.imaging.grids import Grid, grid_for_resolution
from udip_assets.imaging.synth_brain import AgingModel


@dataclass(frozen=True)
class ScanJob:
    """One scan to render: who, which visit, the morphology parameters, and where to write."""

    path: str
    subject_seed: int
    visit: int
    resolution_mm: int
    morphology: dict


def generate_cohort(cfg: SynthConfig, out_dir: Path, force: bool = False, progress: bool = True) -> CohortSpec:
    """Generate (or reuse) the cohort ``cfg`` describes in ``out_dir``; returns its spec.

    An existing complete cohort with the same config is reused; one with a different config is
    refused unless ``force``.
    """
    out_dir = Path(out_dir)
    done = out_dir / COHORT_FILE
    if done.exists() and not force:
        spec = load_cohort(out_dir)
        if spec.extra.get("synthetic") == cfg.to_json():
            return _with_annotation_files(spec, cfg)
        raise UdipConfigError(
            f"{out_dir} already holds a cohort made with other settings; choose another --name, "
            "or pass --force to regenerate it"
        )
    if done.exists():
        done.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    say = tqdm.write if progress else (lambda _msg: None)
    say(f"[{cfg.name}] simulating genotypes: {cfg.n_subjects} subjects, chromosomes {list(cfg.chromosomes)} (msprime)")
    geno = simulate_genotypes(
        GenotypeSimConfig(n_samples=cfg.n_subjects, chromosomes=cfg.chromosomes, chrom_length_bp=cfg.chrom_length_bp),
        seed=cfg.seed,
    )
    eids = _make_eids(cfg.n_subjects, rng)
    causal = choose_causal_snps(geno.variants, cfg, rng)
    volume, shape, causal = plant_effects(geno.dosage, causal, cfg, rng)
    people = _make_people(eids, geno.population, cfg, rng)
    say(f"[{cfg.name}] {geno.dosage.shape[1]} SNPs; planted {len(causal)} causal SNPs; computing PCs and kinship")
    pcs, _ = genetic_pcs(geno.dosage, n_pcs=10, seed=cfg.seed)
    faults = _plan_faults(eids, rng) if cfg.with_faults else {}

    _write_genotypes(out_dir, eids, geno, people, faults)
    _write_covariates(out_dir / "covariates.csv", people, pcs, faults)
    write_ukb_rel(out_dir / "ukb_rel.dat", related_pairs_table(eids, geno.dosage, min_kinship=0.0442))
    _write_genes(out_dir / "genes.tsv", geno.variants, causal, rng)
    jobs = _scan_jobs(out_dir, cfg, people, volume, shape)
    _write_subject_truth(out_dir / "truth_subjects.csv", people, jobs)
    damaged = {e for key in ("truncated_gz", "wrong_grid", "nan_values", "all_zero") for e in faults.get(key, [])}
    for job in jobs:  # damaged scans are always rendered afresh, then damaged once
        if job.visit == 2 and Path(job.path).parent.parent.name.split("_")[0] in damaged:
            Path(job.path).unlink(missing_ok=True)
    measured = _render_all(jobs, progress=progress)
    _write_measured(out_dir / "truth_image_volumes.tsv", jobs, measured)
    last = _last_visit_phenotypes(jobs, measured, people)
    causal["variance_explained_image"] = image_variance_explained(geno.dosage, causal, last)
    write_truth(out_dir / "truth.json", causal, cfg)
    if faults:
        _apply_image_faults(out_dir, cfg, jobs, faults)
        (out_dir / "faults.json").write_text(json.dumps(faults, indent=2))
    spec = CohortSpec(
        name=cfg.name, root=out_dir.resolve(), resolution_mm=cfg.resolution_mm,
        scans_dir=(out_dir / "scans").resolve(), genotypes=(out_dir / "genotypes" / "cohort").resolve(),
        covariates=(out_dir / "covariates.csv").resolve(), relatedness=(out_dir / "ukb_rel.dat").resolve(),
        genes=(out_dir / "genes.tsv").resolve(), truth=(out_dir / "truth.json").resolve(),
        extra={"synthetic": cfg.to_json()},
    )
    return _with_annotation_files(spec, cfg)


def _with_annotation_files(spec: CohortSpec, cfg: SynthConfig) -> CohortSpec:
    """Write the reference-loci and GWAS Catalog demo files (if missing) and the cohort.yaml naming them.

    Also upgrades a cohort generated before these files existed, without re-rendering anything.
    """
    ref_path, cat_path = spec.root / "reference_loci.tsv", spec.root / "gwas_catalog.tsv"
    if spec.reference_loci == ref_path and spec.gwas_catalog == cat_path and (spec.root / COHORT_FILE).exists():
        return spec
    truth = load_truth(spec.truth)
    write_tsv_atomic(reference_loci_from_truth(truth), ref_path)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7]))
    catalog = demo_gwas_catalog(truth, read_bim(spec.genotypes.with_name(spec.genotypes.name + ".bim")),
                                pd.read_csv(spec.genes, sep="\t"), rng)
    write_tsv_atomic(catalog, cat_path)
    write_cohort_yaml(replace(spec, reference_loci=ref_path, gwas_catalog=cat_path))
    return load_cohort(spec.root)


def _make_eids(n: int, rng: np.random.Generator) -> list[str]:
    return [str(e) for e in 1_000_000 + rng.choice(9_000_000, size=n, replace=False)]


def _make_people(eids: list[str], population: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Demographics and scan-level nuisance per subject (UKBB imaging visit ages 45-82)."""
    n = len(eids)
    sex = rng.integers(0, 2, n)
    age2 = np.clip(rng.normal(64, 7.5, n), 45, 82)
    has_v3 = rng.random(n) < cfg.second_visit_fraction
    ethnicity = np.where(population == 0, rng.choice([1001, 1001, 1001, 1002, 1003], n), rng.choice([4001, 3001], n))
    return pd.DataFrame(
        {
            "eid": eids,
            "subject_seed": rng.integers(0, 2**31 - 1, n),
            "population": population,
            "sex": sex,
            "age2": np.round(age2, 1),
            "age3": np.where(has_v3, np.round(age2 + rng.uniform(2.0, 3.5, n), 1), np.nan),
            "has_v3": has_v3,
            "ethnicity": ethnicity,
            "centre2": rng.choice(CENTRES, n, p=[0.45, 0.2, 0.3, 0.05]),
            "inv_cnr2": np.round(rng.lognormal(np.log(0.3), 0.15, n), 4),
            "inv_cnr3": np.round(rng.lognormal(np.log(0.3), 0.15, n), 4),
            "log_head": 0.035 * rng.standard_normal(n) + 0.03 * sex + 0.01 * population,
        }
    ).assign(head_measure_noise=lambda t: 0.01 * rng.standard_normal(n))


def _write_genotypes(out_dir: Path, eids: list[str], geno, people: pd.DataFrame, faults: dict) -> None:
    keep = np.array([e not in faults.get("no_genotypes", []) for e in eids])
    (out_dir / "genotypes").mkdir(exist_ok=True)
    write_plink(
        out_dir / "genotypes" / "cohort",
        [e for e, k in zip(eids, keep, strict=True) if k],
        geno.dosage[keep],
        geno.variants,
        sex=(people["sex"].to_numpy()[keep] + 1) % 2 + 1,  # PLINK: 1 male, 2 female
    )


def _write_covariates(path: Path, people: pd.DataFrame, pcs: np.ndarray, faults: dict) -> None:
    table = pd.DataFrame({"eid": people["eid"], "31-0.0": people["sex"], "21000-0.0": people["ethnicity"]})
    for visit in (2, 3):
        has = people["has_v3"] if visit == 3 else pd.Series(True, index=people.index)
        table[f"21003-{visit}.0"] = people[f"age{visit}"].where(has)
        table[f"25735-{visit}.0"] = people[f"inv_cnr{visit}"].where(has)
        table[f"54-{visit}.0"] = people["centre2"].where(has).astype("Int64")
        # field 25000: volumetric scaling of the head to standard space (1 / head volume ratio), as
        # UK Biobank measures it from the registration, with a small measurement error
        scaling = np.exp(-3.0 * people["log_head"] + people["head_measure_noise"])
        table[f"25000-{visit}.0"] = np.round(scaling, 4).where(has)
    for i in range(10):
        table[f"22009-0.{i + 1}"] = np.round(pcs[:, i], 6)
    for eid in faults.get("duplicated_eid", []):
        dup = table[table["eid"] == eid].copy()
        dup["21003-2.0"] = dup["21003-2.0"] + 7.0
        table = pd.concat([table, dup], ignore_index=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _write_genes(path: Path, variants: pd.DataFrame, causal: pd.DataFrame, rng: np.random.Generator) -> None:
    """A small gene table: one synthetic gene every ~250 kb, and a named gene over each causal SNP."""
    rows = []
    for chrom, block in variants.groupby("chrom"):
        lo, hi = int(block["pos_bp"].min()), int(block["pos_bp"].max())
        for k, start in enumerate(range(lo, hi, 250_000)):
            start = int(start + rng.integers(0, 100_000))
            rows.append((f"G{chrom}S{k:03d}", int(chrom), start, start + int(rng.integers(5_000, 80_000))))
    for r in causal.itertuples():
        name = f"{r.region.upper()[:5]}{r.Index + 1}"
        rows.append((name, int(r.chrom), int(r.pos_bp) - 20_000, int(r.pos_bp) + 15_000))
    genes = pd.DataFrame(rows, columns=["name", "chrom", "start", "end"]).sort_values(["chrom", "start"])
    genes["build"] = "GRCh37-synthetic"
    genes.to_csv(path, sep="\t", index=False)


def scan_path(out_dir: Path, eid: str, visit: int) -> Path:
    """UK Biobank layout: ``scans/{eid}_20252_{visit}_0/T1/T1_brain_to_MNI.nii.gz``."""
    return out_dir / "scans" / f"{eid}_20252_{visit}_0" / UKBB_T1_RELPATH


def _scan_jobs(out_dir: Path, cfg: SynthConfig, people: pd.DataFrame, volume: pd.DataFrame,
               shape: pd.DataFrame) -> list[ScanJob]:
    jobs = []
    for i, p in people.iterrows():
        for visit in (2, 3) if p["has_v3"] else (2,):
            centre_gain = {11025: 1.0, 11026: 0.95, 11027: 1.05, 11028: 0.9}[int(p["centre2"])]
            ageing = AgingModel().region_log_volume(float(p[f"age{visit}"]), int(p["sex"]))
            morph = {
                "head_scale": float(np.exp(p["log_head"])),
                "region_log_volume": {r: _renderable(float(volume.at[i, r]), ageing.get(r, 0.0))
                                      for r in volume.columns},
                "region_stretch": {r: float(shape.at[i, r]) for r in shape.columns},
                "age_years": float(p[f"age{visit}"]),
                "sex": int(p["sex"]),
                "noise_sd": float(0.04 * p[f"inv_cnr{visit}"] / 0.3),
                "intensity_scale": centre_gain,
                "warp_amplitude_mm": WARP_AMPLITUDE_MM,
                "bias_amplitude": RESIDUAL_BIAS,
                "linear_registration": True,
            }
            jobs.append(ScanJob(str(scan_path(out_dir, p["eid"], visit)), int(p["subject_seed"]), visit,
                                cfg.resolution_mm, morph))
    return jobs


def _renderable(planted: float, ageing: float) -> float:
    """A planted log-volume change clipped so that, with the subject's ageing, the renderer accepts it.

    Touches only the extreme tail (a planted change beyond ~3 sd in a very young or old subject).
    """
    lo, hi = -0.59 - ageing, 0.79 - ageing
    return float(min(max(planted, lo), hi))


def _write_subject_truth(path: Path, people: pd.DataFrame, jobs: list[ScanJob]) -> None:
    """Hidden per-subject truth: population and each scan's morphology (planted region changes)."""
    pop = dict(zip(people["eid"], people["population"], strict=True))
    rows = [
        {"eid": Path(j.path).parents[1].name.split("_")[0], "visit": j.visit, "subject_seed": j.subject_seed,
         "population": int(pop[Path(j.path).parents[1].name.split("_")[0]]), "morphology": json.dumps(j.morphology)}
        for j in jobs
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


def _render_all(jobs: list[ScanJob], progress: bool) -> list[dict[str, float]]:
    """Render the scans not on disk yet; return every job's region measures (see :func:`render_job`).

    Scans already written by an interrupted run are not rendered again; their measures are taken
    from the same warp (:func:`measure_job`), which is cheaper than rendering.
    """
    todo = {j.path for j in jobs if not Path(j.path).exists()}
    workers = max(1, min(2, os.cpu_count() or 1))
    bar = tqdm(total=len(jobs), desc="render T1 scans", unit="scan", disable=not progress)
    work = [(job, job.path in todo) for job in jobs]
    if workers == 1 or len(jobs) < 8:
        measured = []
        for item in work:
            measured.append(_render_or_measure(item))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread_per_worker) as pool:
            measured = []
            for result in pool.map(_render_or_measure, work, chunksize=4):
                measured.append(result)
                bar.update()
    bar.close()
    return measured


def _one_thread_per_worker() -> None:
    """One process per core renders: torch's interpolation must not start threads of its own."""
    import torch

    torch.set_num_threads(1)


def _render_or_measure(item: tuple[ScanJob, bool]) -> dict[str, float]:
    job, render = item
    return render_job(job) if render else measure_job(job)


def _subject_warp(job: ScanJob):
    """The anatomy, morphology and warp of a scan job (the warp is a pure function of the seed)."""
    from udip_assets.imaging.anatomy import load_anatomy
    from udip_assets.imaging.synth_brain import Morphology, sample_warp

    anatomy = load_anatomy(grid_for_resolution(job.resolution_mm))
    morph = Morphology(**job.morphology)
    # The random warp is the subject's anatomy (same draws at both visits); the noise differs by visit.
    return anatomy, morph, sample_warp(anatomy, morph, np.random.default_rng([job.subject_seed, 0]))


def _measures(anatomy, warp) -> dict[str, float]:
    from udip_assets.imaging.synth_brain import measure_regions

    out = {}
    for region, (volume, stretch) in measure_regions(anatomy, warp).items():
        out[f"{region}_mm3"], out[f"{region}_stretch"] = volume, stretch
    return out


def measure_job(job: ScanJob) -> dict[str, float]:
    """Region volumes (mm^3) and stretches as they are in the job's image, without rendering it."""
    anatomy, _, warp = _subject_warp(job)
    return _measures(anatomy, warp)


def render_job(job: ScanJob) -> dict[str, float]:
    """Render one scan, write it atomically, return its measures (runs in a worker process)."""
    from udip_assets.imaging.synth_brain import render_t1

    anatomy, morph, warp = _subject_warp(job)
    volume = render_t1(anatomy, warp, morph, np.random.default_rng([job.subject_seed, job.visit]))
    write_nifti_gz(Path(job.path), volume, anatomy.grid)
    return _measures(anatomy, warp)


def _job_eid(job: ScanJob) -> str:
    return Path(job.path).parents[1].name.split("_")[0]


def _write_measured(path: Path, jobs: list[ScanJob], measured: list[dict[str, float]]) -> None:
    """Hidden truth: each scan's region volumes (mm^3) and stretches measured in its image."""
    table = pd.DataFrame(measured)
    table.insert(0, "visit", [j.visit for j in jobs])
    table.insert(0, "eid", [_job_eid(j) for j in jobs])
    write_tsv_atomic(table, path)


def _last_visit_phenotypes(jobs: list[ScanJob], measured: list[dict[str, float]],
                           people: pd.DataFrame) -> pd.DataFrame:
    """Per subject (rows as ``people``): ``vol_<r>`` log mm^3, ``stretch_<r>`` of the last visit, age, sex."""
    last: dict[str, tuple[int, dict[str, float], float]] = {}
    for job, m in zip(jobs, measured, strict=True):
        eid = _job_eid(job)
        if eid not in last or job.visit > last[eid][0]:
            last[eid] = (job.visit, m, job.morphology["age_years"])
    rows = []
    for eid in people["eid"]:
        _, m, age = last[eid]
        row = {"age": age}
        for key, value in m.items():
            region, measure = key.rsplit("_", 1)
            if measure == "mm3":
                row[f"vol_{region}"] = float(np.log(value)) if value > 0 else np.nan
            else:
                row[f"stretch_{region}"] = value
        rows.append(row)
    out = pd.DataFrame(rows, index=people.index)
    out["sex"] = people["sex"].to_numpy()
    return out


def write_nifti_gz(path: Path, volume: np.ndarray, grid: Grid | None = None, affine: np.ndarray | None = None,
                   level: int = 3) -> None:
    """Write a float32 NIfTI-1 ``.nii.gz`` atomically (temp file, then rename), sform/qform MNI."""
    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), grid.affine if grid is not None else affine)
    img.set_sform(img.affine, code=4)
    img.set_qform(img.affine, code=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the gzip header names the destination, not the temporary
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(path.name, "wb", compresslevel=level, fileobj=raw) as fh:
        fh.write(img.to_bytes())


def _plan_faults(eids: list[str], rng: np.random.Generator) -> dict:
    picks = [str(e) for e in rng.choice(eids, size=6, replace=False)]
    return {
        "truncated_gz": [picks[0]],
        "wrong_grid": [picks[1]],
        "nan_values": [picks[2]],
        "all_zero": [picks[3]],
        "no_genotypes": [picks[4]],
        "duplicated_eid": [picks[5]],
    }


def _apply_image_faults(out_dir: Path, cfg: SynthConfig, jobs: list[ScanJob], faults: dict) -> None:
    """Damage the planned scans: truncate a .gz, re-render one on the other grid, NaNs, all zeros."""
    grid = grid_for_resolution(cfg.resolution_mm)
    (eid_trunc,), (eid_grid,) = faults["truncated_gz"], faults["wrong_grid"]
    (eid_nan,), (eid_zero,) = faults["nan_values"], faults["all_zero"]
    path = scan_path(out_dir, eid_trunc, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    wrong = next(j for j in jobs if j.visit == 2 and j.path == str(scan_path(out_dir, eid_grid, 2)))
    render_job(replace(wrong, resolution_mm=2 if cfg.resolution_mm == 1 else 1))
    vol = np.asarray(nib.load(scan_path(out_dir, eid_nan, 2)).dataobj, dtype=np.float32)
    c = [s // 2 for s in vol.shape]
    vol[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] = np.nan
    write_nifti_gz(scan_path(out_dir, eid_nan, 2), vol, grid)
    write_nifti_gz(scan_path(out_dir, eid_zero, 2), np.zeros(grid.shape, np.float32), grid)
