"""A synthetic UK Biobank-like cohort with known genetic truth.

``generate_cohort`` writes a cohort folder that a real cohort could have produced: T1 scans in UK
Biobank layout on the FSL MNI152 grid, PLINK genotypes from a coalescent simulation, a showcase-style
covariate table, a ``ukb_rel.dat`` kinship table, a gene table and ``truth.json`` naming the planted
causal SNPs and the region each acts on.

Notes
-----
The phenotype model. For subject i and region r, the log volume change applied to the template is

    v_ir = sum_k beta_k (g_ik - 2 p_k) + e_ir,   e_ir ~ N(0, sd^2)

over the causal SNPs k acting on r (g = count of the SNP's a1 allele, p its frequency), with
sd = region_sd for volume and region_sd * SHAPE_SD_FACTOR for shape (log stretch). beta_k is set from a
target variance explained q_k of v_r: beta_k = sd sqrt(q_k / (1 - q_k)) / sqrt(2 p_k (1 - p_k)).
Age atrophy, sex and ancestry act through head size and the renderer's age model, on top.

The images. The scans are what the paper used (its Methods: "brain extraction and bias field
correction. Linear registrations were performed to align the imaging data into MNI152 space"):
each subject has a native head size (``head_scale``, reported as UK Biobank field 25000, the
volumetric scaling from the T1 head image to standard space, ``25000-2.0`` = head_scale^-3) and a
smooth random warp, but the image is rendered as linearly registered: head size and the affine
part of the warp are normalised away (:class:`udip_assets.imaging.synth_brain.Morphology`,
``linear_registration``), leaving the non-affine part (~1 mm RMS, see ``WARP_AMPLITUDE_MM``), a
residual bias field of ``RESIDUAL_BIAS`` RMS after bias correction, noise that follows the
scan's inverted CNR, and the genotype-driven regional morphology.

Detectability. A planted SNP's phenotype is measured in the rendered image: the region's
partial-volume log volume (or its measured log stretch) through the subject's own warp
(``truth_image_volumes.tsv``), adjusted for age and sex; ``variance_explained_image`` is the
SNP's share of it. A SNP is ``detectable`` when a 1-df test of that phenotype has at least 80%
power at 5e-8/128 on the GWAS sample (non-centrality n q / (1 - q)). ``truth.json`` records it for
the expected n of the default split; ``udip truth`` re-evaluates it on the GWAS sample and
number of dims actually used (:func:`detectable_at`). The UDIPs see the region only through the
image, so this is an upper bound on what the pipeline can find.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from udip_assets.cohort.splits import SplitConfig
from udip_assets.errors import UdipConfigError

GWAS_ALPHA = 5e-8 / 128
# Fidelity of the rendered scans to UK Biobank's T1_brain_to_MNI as the paper used it (see the
# module Notes and the README, "The synthetic cohort"). Chosen from the documented processing,
# never from the demo's recall.
# Random warp drawn at 2 mm RMS; removing its affine part (linear registration) leaves ~1.05 mm RMS
# of smooth non-affine displacement, the order of the residual misalignment of subcortical
# landmarks after a linear/Talairach-type normalisation (< 1 mm for most of them, Grachev et al.
# 1999, NeuroImage 9:250); cortex varies more, at scales this low-order field does not carry.
WARP_AMPLITUDE_MM = 2.0
# RMS of the log bias field left after FAST bias-field correction: a few per cent.
RESIDUAL_BIAS = 0.02
MAX_LOG_VOLUME = 0.35
MAX_STRETCH = 0.09
# Shape (stretch) varies less than volume between people; its noise sd is this fraction of region_sd.
SHAPE_SD_FACTOR = 0.25
CENTRES = (11025, 11026, 11027, 11028)  # UKBB imaging centres: Cheadle, Reading, Newcastle, Bristol


@dataclass(frozen=True)
class PlantedEffect:
    """A causal SNP to plant: the region it acts on, how, and its target variance explained."""

    region: str
    kind: str = "volume"  # "volume" (log volume change) or "shape" (volume-preserving stretch)
    variance_explained: float = 0.12
    reported: bool = False  # marked as "previously reported" (a reference locus for novelty checks)


DEFAULT_EFFECTS: tuple[PlantedEffect, ...] = (
    PlantedEffect("ventricles", variance_explained=0.20, reported=True),
    PlantedEffect("hippocampus", variance_explained=0.15),
    PlantedEffect("thalamus", variance_explained=0.15, reported=True),
    PlantedEffect("cerebellum", variance_explained=0.12),
    PlantedEffect("caudate", variance_explained=0.15),
    PlantedEffect("putamen", variance_explained=0.12, reported=True),
    PlantedEffect("ventricles", kind="shape", variance_explained=0.15),
    PlantedEffect("pallidum", variance_explained=0.10),
    PlantedEffect("amygdala", variance_explained=0.02),
    PlantedEffect("hippocampus", variance_explained=0.015),
)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic cohort; the same config and seed give the same files."""

    name: str = "demo"
    n_subjects: int = 1200
    resolution_mm: int = 2
    seed: int = 0
    with_faults: bool = False
    chromosomes: tuple[int, ...] = (2, 6, 11)
    chrom_length_bp: int = 10_000_000
    second_visit_fraction: float = 0.1
    region_sd: float = 0.10
    min_causal_maf: float = 0.15
    min_causal_spacing_bp: int = 2_000_000
    effects: tuple[PlantedEffect, ...] = field(default=DEFAULT_EFFECTS)

    def __post_init__(self) -> None:
        if self.n_subjects < 20:
            raise UdipConfigError(f"n_subjects must be at least 20, got {self.n_subjects}")
        if self.resolution_mm not in (1, 2):
            raise UdipConfigError(f"resolution_mm must be 1 or 2, got {self.resolution_mm}")
        if not 0.0 <= self.second_visit_fraction <= 1.0:
            raise UdipConfigError(f"second_visit_fraction must be in [0, 1], got {self.second_visit_fraction}")
        for e in self.effects:
            if e.kind not in ("volume", "shape"):
                raise UdipConfigError(f"effect kind must be 'volume' or 'shape', got {e.kind!r} for {e.region}")
            if not 0.0 < e.variance_explained < 0.5:
                raise UdipConfigError(
                    f"variance_explained must be in (0, 0.5), got {e.variance_explained} for {e.region}"
                )

    def to_json(self) -> dict:
        """Plain JSON types (lists, not tuples), so it compares equal to what YAML reads back."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, raw: dict) -> SynthConfig:
        raw = dict(raw)
        raw["chromosomes"] = tuple(raw["chromosomes"])
        raw["effects"] = tuple(PlantedEffect(**e) for e in raw["effects"])
        return cls(**raw)


def expected_gwas_n(cfg: SynthConfig, split: SplitConfig | None = None) -> int:
    """Expected GWAS sample: the inference share of ``split`` (default: the paper's), less ~5% dropped.

    With absolute ``train_count`` / ``val_count`` the inference split is what they leave.
    """
    split = split or SplitConfig()
    if split.train_count is not None:
        n_inference = cfg.n_subjects * 0.95 - split.train_count - (split.val_count or 0)
        return max(int(round(n_inference)), 0)
    return int(round(cfg.n_subjects * split.inference_fraction * 0.95))


def gwas_power(n: int, variance_explained: float, alpha: float = GWAS_ALPHA) -> float:
    """Power of a 1-df association test with non-centrality n q / (1 - q) at level ``alpha``."""
    ncp = n * variance_explained / (1.0 - variance_explained)
    crit = stats.chi2.isf(alpha, df=1)
    return float(stats.ncx2.sf(crit, df=1, nc=ncp))


def detectable_at(truth: pd.DataFrame, n_gwas: int, n_dims: int = 128) -> pd.DataFrame:
    """``truth`` with ``power`` and ``detectable`` for a GWAS of ``n_gwas`` subjects at 5e-8 / n_dims.

    Uses ``variance_explained_image`` (the SNP's share of its phenotype as measured in the
    image) when the truth file has it, else the planted ``variance_explained``.
    """
    q = truth["variance_explained_image"] if "variance_explained_image" in truth else truth["variance_explained"]
    alpha = 5e-8 / n_dims
    power = [gwas_power(n_gwas, float(v), alpha) if np.isfinite(v) else 0.0 for v in q]
    return truth.assign(power=power, detectable=np.asarray(power) >= 0.8)


def image_variance_explained(dosage: np.ndarray, causal: pd.DataFrame, measured: pd.DataFrame) -> np.ndarray:
    """Each causal SNP's share of its phenotype as measured in the images, net of age and sex.

    Parameters
    ----------
    dosage : (n_subjects, n_snps) int8
    causal : DataFrame
        One row per planted effect (``variant_index``, ``region``, ``kind``).
    measured : DataFrame (n_subjects, ...)
        Rows aligned with ``dosage``: ``vol_<region>`` (log mm^3) and ``stretch_<region>`` of each
        subject's last visit, as measured in its image, and that visit's ``age`` and ``sex``.

    Returns
    -------
    ndarray (n_effects,)
        Squared partial correlation of dosage and phenotype given [1, age, sex].

    Notes
    -----
    The GWAS adjusts for age and sex (and more), so the share of the residual variance is what
    sets its power; other covariates (PCs, centre) explain little of a region's morphology here.
    """
    design = np.column_stack([np.ones(len(measured)), measured["age"].to_numpy(float),
                              measured["sex"].to_numpy(float)])
    q, _ = np.linalg.qr(design)
    out = []
    for rec in causal.itertuples():
        y = measured[f"{'vol' if rec.kind == 'volume' else 'stretch'}_{rec.region}"].to_numpy(float)
        g = dosage[:, rec.variant_index].astype(float)
        y_res, g_res = y - q @ (q.T @ y), g - q @ (q.T @ g)
        out.append(float(np.dot(y_res, g_res) ** 2 / (np.dot(y_res, y_res) * np.dot(g_res, g_res))))
    return np.array(out)


def choose_causal_snps(
    variants: pd.DataFrame, cfg: SynthConfig, rng: np.random.Generator
) -> pd.DataFrame:
    """Pick one SNP per planted effect: common (MAF >= min_causal_maf), spread apart.

    Returns
    -------
    DataFrame
        One row per effect: the variant's columns plus ``variant_index``, ``region``, ``kind``,
        ``variance_explained``, ``reported``.
    """
    maf = np.minimum(variants["a1_freq"], 1 - variants["a1_freq"])
    pool = np.flatnonzero(maf.to_numpy() >= cfg.min_causal_maf)
    rng.shuffle(pool)
    chosen: list[int] = []
    for idx in pool:
        chrom, pos = variants.at[idx, "chrom"], variants.at[idx, "pos_bp"]
        if all(
            variants.at[j, "chrom"] != chrom or abs(variants.at[j, "pos_bp"] - pos) >= cfg.min_causal_spacing_bp
            for j in chosen
        ):
            chosen.append(int(idx))
        if len(chosen) == len(cfg.effects):
            break
    if len(chosen) < len(cfg.effects):
        raise UdipConfigError(
            f"only {len(chosen)} SNPs with MAF >= {cfg.min_causal_maf} lie {cfg.min_causal_spacing_bp} bp apart; "
            f"{len(cfg.effects)} effects were asked for. Use more or longer chromosomes, or fewer effects"
        )
    out = variants.iloc[chosen].copy()
    out["variant_index"] = chosen
    for col in ("region", "kind", "variance_explained", "reported"):
        out[col] = [getattr(e, col) for e in cfg.effects]
    return out.reset_index(drop=True)


def plant_effects(
    dosage: np.ndarray, causal: pd.DataFrame, cfg: SynthConfig, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-subject region log-volume and shape changes from the causal SNPs plus region noise.

    Parameters
    ----------
    dosage : (n_subjects, n_snps) int8
        Allele counts of ``a1``.

    Returns
    -------
    volume : DataFrame (n_subjects, n_regions)
        Log volume change per region (genetic part + noise).
    shape : DataFrame (n_subjects, n_shape_regions)
        Log stretch per region with a shape effect (genetic part + noise).
    causal : DataFrame
        ``causal`` with ``beta`` (per allele, in log units) and ``power`` added.
    """
    n = dosage.shape[0]
    causal = causal.copy()
    p = causal["a1_freq"].to_numpy()
    q = causal["variance_explained"].to_numpy()
    sd = np.where(causal["kind"] == "shape", cfg.region_sd * SHAPE_SD_FACTOR, cfg.region_sd)
    causal["beta"] = sd * np.sqrt(q / (1 - q)) / np.sqrt(2 * p * (1 - p))
    volume_regions = sorted(set(causal.loc[causal["kind"] == "volume", "region"]))
    shape_regions = sorted(set(causal.loc[causal["kind"] == "shape", "region"]))
    volume = pd.DataFrame(rng.normal(0, cfg.region_sd, (n, len(volume_regions))), columns=volume_regions)
    shape_sd = cfg.region_sd * SHAPE_SD_FACTOR
    shape = pd.DataFrame(rng.normal(0, shape_sd, (n, len(shape_regions))), columns=shape_regions)
    for rec in causal.itertuples():
        g = dosage[:, rec.variant_index].astype(np.float64)
        target = volume if rec.kind == "volume" else shape
        target[rec.region] += rec.beta * (g - 2 * rec.a1_freq)
    # The renderer accepts log volume changes up to +-0.4 and stretches up to +-0.1; clipping just
    # inside (beyond 3.5 sd of each) touches ~1 subject in 2,000 and keeps every scan renderable.
    return volume.clip(-MAX_LOG_VOLUME, MAX_LOG_VOLUME), shape.clip(-MAX_STRETCH, MAX_STRETCH), causal


def write_truth(path: Path, causal: pd.DataFrame, cfg: SynthConfig) -> None:
    """``truth.json``: the planted SNPs (snp, chrom, pos_bp, region, effect, detectable, ...).

    ``causal`` must carry ``variance_explained_image``; ``power`` and ``detectable`` are
    evaluated for the expected GWAS n of the default split (see :func:`detectable_at`).
    """
    n_gwas = expected_gwas_n(cfg)
    causal = detectable_at(causal, n_gwas)
    entries = [
        {
            "snp": r.snp,
            "chrom": int(r.chrom),
            "pos_bp": int(r.pos_bp),
            "a1": r.a1,
            "a1_freq": float(r.a1_freq),
            "region": r.region,
            "kind": r.kind,
            "effect": float(r.beta),
            "variance_explained": float(r.variance_explained),
            "variance_explained_image": float(r.variance_explained_image),
            "power": float(r.power),
            "detectable": bool(r.detectable),
            "reported": bool(r.reported),
        }
        for r in causal.itertuples()
    ]
    doc = {
        "causal": entries,
        "effect_units": "natural-log change of region volume (kind=volume) or stretch (kind=shape) per a1 allele",
        "detectable_rule": (f"power >= 0.8 at alpha {GWAS_ALPHA:.3g} for the phenotype measured in the image "
                            f"(variance_explained_image) at n={n_gwas}; udip truth re-evaluates it on the GWAS "
                            "sample actually used"),
        "generator": cfg.to_json(),
    }
    path.write_text(json.dumps(doc, indent=2))
