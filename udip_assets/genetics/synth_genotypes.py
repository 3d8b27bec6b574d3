"""Synthetic genotypes: two ancestral populations, families, and PLINK-ready biallelic SNPs.

A coalescent simulation (msprime) of two populations that split ``split_generations`` ago gives the
founders' haplotypes, chromosome by chromosome. Siblings and parent-offspring pairs are then made
from those haplotypes by a forward meiosis (a Poisson number of crossovers at uniform positions), so
relatives share exactly the segments a pedigree predicts. The cohort keeps biallelic SNPs with minor
allele frequency >= ``min_maf``; allele ``a1`` is the minor allele and ``dosage`` counts it.

The module is plain Python (numpy, pandas, msprime): no Dagster, no warehouse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import msprime
import numpy as np
import pandas as pd

from udip_assets.errors import require_field

# GRCh37 chromosome lengths (bp), used to keep simulated windows inside real chromosomes.
GRCH37_LENGTH_BP = {
    1: 249_250_621, 2: 243_199_373, 3: 198_022_430, 4: 191_154_276, 5: 180_915_260,
    6: 171_115_067, 7: 159_138_663, 8: 146_364_022, 9: 141_213_431, 10: 135_534_747,
    11: 135_006_516, 12: 133_851_895, 13: 115_169_878, 14: 107_349_540, 15: 102_531_392,
    16: 90_354_753, 17: 81_195_210, 18: 78_077_248, 19: 59_128_983, 20: 63_025_520,
    21: 48_129_895, 22: 51_304_566,
}
POPULATION_NAMES = ("pop0", "pop1")
RELATIONSHIPS = ("sibling", "parent_offspring")
_DEFAULT_START_BP = 5_000_000  # a few Mb in, past the telomere, on every chromosome
_DEFAULT_RELATIVE_FRACTION = 0.02  # pairs of each relationship, as a fraction of n_samples

Progress = Callable[[str], None]


_require = partial(require_field, owner="GenotypeSimConfig")


@dataclass(frozen=True)
class GenotypeSimConfig:
    """Configuration of a synthetic genotype cohort.

    Parameters
    ----------
    n_samples : int
        Individuals in the final cohort, relatives included.
    chromosomes : tuple of int
        Real chromosome numbers (1-22) to simulate, one independent simulation each.
    chrom_length_bp : int
        Simulated length of every chromosome (bp).
    chrom_start_bp : tuple of int or None
        GRCh37 position (bp, 0-based offset) at which each simulated chromosome starts, aligned with
        ``chromosomes``; None puts every window 5 Mb in. Resolved to a tuple on construction.
    population_fractions : tuple of float
        Share of the cohort drawn from each of the two ancestral populations; sums to 1.
    effective_size : float
        Historical diploid effective size of each population and of their ancestor.
    present_size : float
        Diploid size of each population today, reached by exponential growth.
    growth_generations : float
        Generations since the exponential growth began (less than ``split_generations``).
    split_generations : float
        Generations since the two populations split.
    mutation_rate, recombination_rate : float
        Per bp per generation.
    min_maf : float
        SNPs with minor allele frequency below this in the cohort are dropped.
    n_sibling_pairs, n_parent_offspring_pairs : int or None
        Relative pairs in the cohort; None means 2% of ``n_samples`` each (resolved on construction).
    crossovers_per_meiosis : float
        Mean crossovers of one meiosis over the whole simulated genome, spread over chromosomes in
        proportion to their length.

    Notes
    -----
    With no migration, Hudson's Fst (Bhatia et al. 2013: 1 - pi_within / pi_between) of two
    populations of size N split T generations ago is T / (T + 2N); the defaults (N = 5,000,
    T = 1,000) give about 0.09 (measured 0.088 at demo size), and ~12k SNPs with MAF >= 1% per
    10 Mb for 1,300 samples. N = 5,000 with r = 2.5e-8 keeps the population recombination rate
    4Nr = 5e-4 per bp at its human value (LD decays over tens of kb, as in Europeans) while
    theta = 4N mu is 2.5x below human, so 30 Mb hold ~36k common SNPs. A genome of 30 Mb has few
    independent genealogies, so KING kinship of unrelated pairs is noisy: its sd is ~0.035 at
    r = 1e-8 (0.03% of pairs > 0.0884) and ~0.022 at 2.5e-8 (0.002%); raise the rate further for
    tiny test genomes. The 36 crossovers per meiosis match a human genome-wide meiosis: each short
    simulated chromosome stands in for a share of the genome, so that sibling kinship varies as
    much as it does genome-wide (sd ~0.02) instead of swinging between 0 and 0.5.
    """

    n_samples: int
    chromosomes: tuple[int, ...] = (2, 6, 11)
    chrom_length_bp: int = 10_000_000
    chrom_start_bp: tuple[int, ...] | None = None
    population_fractions: tuple[float, float] = (0.85, 0.15)
    effective_size: float = 5_000.0
    present_size: float = 500_000.0
    growth_generations: float = 100.0
    split_generations: float = 1_000.0
    mutation_rate: float = 1.25e-8
    recombination_rate: float = 2.5e-8
    min_maf: float = 0.01
    n_sibling_pairs: int | None = None
    n_parent_offspring_pairs: int | None = None
    crossovers_per_meiosis: float = 36.0

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_chromosomes()
        self._check_rates()
        self._check_relatives()

    def _check_sizes(self) -> None:
        _require(isinstance(self.n_samples, int | np.integer) and self.n_samples >= 2,
                 "n_samples", "an integer >= 2", self.n_samples)
        fr = tuple(float(f) for f in self.population_fractions)
        _require(len(fr) == 2 and all(0 < f < 1 for f in fr) and abs(sum(fr) - 1) < 1e-9,
                 "population_fractions", "two fractions in (0, 1) summing to 1", self.population_fractions)
        object.__setattr__(self, "population_fractions", fr)
        _require(self.effective_size >= 10, "effective_size", "a diploid size >= 10", self.effective_size)
        _require(self.present_size >= self.effective_size, "present_size",
                 f">= effective_size ({self.effective_size:g})", self.present_size)
        _require(0 < self.growth_generations < self.split_generations, "growth_generations",
                 f"in (0, split_generations = {self.split_generations:g})", self.growth_generations,
                 "growth must start after the populations split")

    def _check_chromosomes(self) -> None:
        chroms = tuple(self.chromosomes)
        _require(len(chroms) > 0 and len(set(chroms)) == len(chroms)
                 and all(isinstance(c, int | np.integer) and c in GRCH37_LENGTH_BP for c in chroms),
                 "chromosomes", "distinct autosome numbers 1-22", self.chromosomes)
        _require(1_000 <= self.chrom_length_bp <= 100_000_000, "chrom_length_bp",
                 "between 1,000 and 100,000,000 bp", self.chrom_length_bp)
        starts = self.chrom_start_bp
        if starts is None:
            starts = (_DEFAULT_START_BP,) * len(chroms)
        starts = tuple(int(s) for s in starts)
        _require(len(starts) == len(chroms), "chrom_start_bp",
                 f"one start per chromosome ({len(chroms)})", self.chrom_start_bp)
        for chrom, start in zip(chroms, starts, strict=True):
            end = start + self.chrom_length_bp
            _require(start >= 0 and end <= GRCH37_LENGTH_BP[chrom], "chrom_start_bp",
                     f"a window inside chromosome {chrom} (0..{GRCH37_LENGTH_BP[chrom]:,} bp)",
                     (start, end), "move the start or shorten chrom_length_bp")
        object.__setattr__(self, "chromosomes", chroms)
        object.__setattr__(self, "chrom_start_bp", starts)

    def _check_rates(self) -> None:
        _require(0 < self.mutation_rate < 1e-5, "mutation_rate", "in (0, 1e-5) per bp per generation",
                 self.mutation_rate)
        _require(0 < self.recombination_rate < 1e-5, "recombination_rate",
                 "in (0, 1e-5) per bp per generation", self.recombination_rate)
        _require(0 <= self.min_maf < 0.5, "min_maf", "in [0, 0.5)", self.min_maf)
        _require(self.crossovers_per_meiosis >= 0, "crossovers_per_meiosis", ">= 0",
                 self.crossovers_per_meiosis)

    def _check_relatives(self) -> None:
        default = int(round(_DEFAULT_RELATIVE_FRACTION * self.n_samples))
        for name in ("n_sibling_pairs", "n_parent_offspring_pairs"):
            value = getattr(self, name)
            value = default if value is None else value
            _require(isinstance(value, int | np.integer) and value >= 0, name, "an integer >= 0", value)
            object.__setattr__(self, name, int(value))
        n_related = 2 * (self.n_sibling_pairs + self.n_parent_offspring_pairs)
        _require(n_related <= self.n_samples, "n_sibling_pairs",
                 f"small enough that 2 x (siblings + parent-offspring pairs) <= n_samples ({self.n_samples})",
                 (self.n_sibling_pairs, self.n_parent_offspring_pairs), "lower the pair counts")


@dataclass
class GenotypeSim:
    """A simulated cohort's genotypes.

    Attributes
    ----------
    dosage : np.ndarray
        (n_samples, n_variants) int8, the count (0/1/2) of allele ``a1`` in each sample.
    variants : pd.DataFrame
        One row per variant: ``snp`` (unique 'rs' name), ``chrom`` (int), ``pos_bp`` (GRCh37-like,
        1-based, strictly increasing within chrom), ``a1`` (minor allele), ``a2``, ``a1_freq``.
    population : np.ndarray
        (n_samples,) int, index of each sample's ancestral population (0 or 1).
    relatives : pd.DataFrame
        One row per planted pair: ``i`` < ``j`` (row indices into ``dosage``), ``relationship``
        ('sibling' or 'parent_offspring').
    config : GenotypeSimConfig or None
        The resolved configuration that made the cohort.
    """

    dosage: np.ndarray
    variants: pd.DataFrame
    population: np.ndarray
    relatives: pd.DataFrame
    config: GenotypeSimConfig | None = field(default=None)

    @property
    def n_samples(self) -> int:
        """Rows of ``dosage``."""
        return int(self.dosage.shape[0])

    @property
    def n_variants(self) -> int:
        """Columns of ``dosage``."""
        return int(self.dosage.shape[1])


@dataclass(frozen=True)
class _CohortPlan:
    """Who is who: founders simulated by msprime and how cohort members derive from them.

    ``founder_pop`` (n_founders,) is sorted by population, matching msprime's sample order;
    ``member_founder`` (n_samples,) is a member's founder index or -1 for a child; ``member_parents``
    (n_samples, 2) holds a child's two founder indices or -1.
    """

    founder_pop: np.ndarray
    member_founder: np.ndarray
    member_parents: np.ndarray
    population: np.ndarray
    relatives: pd.DataFrame


def _plan_units(cfg: GenotypeSimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Family units (kind 0 unrelated, 1 sibship, 2 parent-offspring) and each unit's population."""
    n_unrelated = cfg.n_samples - 2 * (cfg.n_sibling_pairs + cfg.n_parent_offspring_pairs)
    kind = np.repeat([0, 1, 2], [n_unrelated, cfg.n_sibling_pairs, cfg.n_parent_offspring_pairs])
    unit_pop = np.zeros(kind.size, dtype=np.int64)
    unit_pop[: int(round(cfg.population_fractions[1] * kind.size))] = 1
    rng.shuffle(unit_pop)
    return kind, unit_pop


def _plan_cohort(cfg: GenotypeSimConfig, rng: np.random.Generator) -> _CohortPlan:
    """Assign founders to family units and lay out the cohort in a random order.

    Notes
    -----
    Every unit has one population: unrelated founders (1 founder, in the cohort), sibships (2
    founders outside the cohort, 2 children in it) and parent-offspring units (2 founders, one in the
    cohort, plus their child). Founders therefore number exactly ``n_samples``.
    """
    kind, unit_pop = _plan_units(cfg, rng)
    n_founders = np.where(kind == 0, 1, 2)
    order = np.argsort(unit_pop, kind="stable")
    first = np.empty(kind.size, dtype=np.int64)
    first[order] = np.concatenate([[0], np.cumsum(n_founders[order])[:-1]])
    founder_pop = np.repeat(unit_pop[order], n_founders[order])
    founder, parents, pops, pairs = [], [], [], []
    for k, f, pop in zip(kind, first, unit_pop, strict=True):
        m = len(founder)
        if k == 0:
            founder += [f]
            parents += [(-1, -1)]
        elif k == 1:
            founder += [-1, -1]
            parents += [(f, f + 1), (f, f + 1)]
            pairs.append((m, m + 1, RELATIONSHIPS[0]))
        else:
            founder += [f, -1]
            parents += [(-1, -1), (f, f + 1)]
            pairs.append((m, m + 1, RELATIONSHIPS[1]))
        pops += [pop] * (len(founder) - m)
    perm = rng.permutation(cfg.n_samples)
    new_index = np.argsort(perm)
    rel = pd.DataFrame(
        [(min(new_index[i], new_index[j]), max(new_index[i], new_index[j]), r) for i, j, r in pairs],
        columns=["i", "j", "relationship"],
    ).astype({"i": np.int64, "j": np.int64, "relationship": str})
    rel = rel.sort_values(["i", "j"], ignore_index=True)
    return _CohortPlan(founder_pop=founder_pop, member_founder=np.asarray(founder, np.int64)[perm],
                       member_parents=np.asarray(parents, np.int64).reshape(-1, 2)[perm],
                       population=np.asarray(pops, np.int64)[perm], relatives=rel)


def _demography(cfg: GenotypeSimConfig) -> msprime.Demography:
    """Two populations split ``split_generations`` ago from an ancestor of ``effective_size``.

    Notes
    -----
    Each population keeps ``effective_size`` until ``growth_generations`` ago, then grows
    exponentially to ``present_size``. Without that growth a cohort of ~1,000 drawn from 5,000
    people is full of cryptic cousins (twice as many KING pairs > 0.044 in our 1,300-sample runs);
    with it, as in UK Biobank, recent common ancestors are rare while LD and Fst still reflect the
    historical size.
    """
    dem = msprime.Demography()
    growth = np.log(cfg.present_size / cfg.effective_size) / cfg.growth_generations
    for name in POPULATION_NAMES:
        dem.add_population(name=name, initial_size=cfg.present_size, growth_rate=growth)
    dem.add_population(name="ancestral", initial_size=cfg.effective_size)
    for name in POPULATION_NAMES:
        dem.add_population_parameters_change(time=cfg.growth_generations, initial_size=cfg.effective_size,
                                             growth_rate=0, population=name)
    dem.add_population_split(time=cfg.split_generations, derived=list(POPULATION_NAMES),
                             ancestral="ancestral")
    dem.sort_events()
    return dem


def _site_alleles(ts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per site: ancestral letter, derived letter of its first mutation, and its mutation count.

    Jukes-Cantor states are single letters, so the tables' ragged byte columns are read directly.
    """
    sites, muts = ts.tables.sites, ts.tables.mutations
    if np.any(np.diff(sites.ancestral_state_offset) != 1) or np.any(np.diff(muts.derived_state_offset) != 1):
        raise RuntimeError("expected single-letter alleles from the Jukes-Cantor mutation model")
    n_mut = np.bincount(muts.site, minlength=ts.num_sites)
    first = np.minimum(np.searchsorted(muts.site, np.arange(ts.num_sites)), max(muts.num_rows - 1, 0))
    ancestral = sites.ancestral_state.view("S1").astype(str)
    derived = muts.derived_state.view("S1").astype(str)[first] if muts.num_rows else ancestral.copy()
    return ancestral, derived, n_mut


def _derived_counts(ts, single: np.ndarray) -> np.ndarray:
    """(n_sites,) float64 count of sample haplotypes carrying the mutation of each ``single`` site.

    Sites where ``single`` is False get NaN. One pass over the trees; each count is the number of
    samples below the mutation's node.
    """
    muts = ts.tables.mutations
    idx = np.flatnonzero(single)
    node = muts.node[np.searchsorted(muts.site, idx)]
    pos = ts.tables.sites.position[idx]
    counts = np.full(ts.num_sites, np.nan)
    for tree in ts.trees():
        lo, hi = np.searchsorted(pos, tree.interval)
        for k in range(lo, hi):
            counts[idx[k]] = tree.num_samples(node[k])
    return counts


def _founder_haplotypes(cfg: GenotypeSimConfig, founder_pop: np.ndarray, seeds: np.ndarray):
    """Simulate one chromosome for all founders.

    Returns
    -------
    haps : np.ndarray
        (2 * n_founders, n_sites) int8, 1 = derived allele; founder k owns rows 2k and 2k + 1.
    pos : np.ndarray
        (n_sites,) int64 0-based position within the simulated window (bp).
    ancestral, derived : np.ndarray
        (n_sites,) single-letter alleles.

    Notes
    -----
    Sites with more than one mutation (multi-allelic or recurrent under Jukes-Cantor) are dropped.
    A loose prefilter (founder MAF >= min_maf / 2) keeps memory small; the exact MAF filter runs on
    the final cohort, whose children only recombine founder haplotypes.
    """
    counts = np.bincount(founder_pop, minlength=2)
    samples = [msprime.SampleSet(int(c), population=POPULATION_NAMES[p]) for p, c in enumerate(counts) if c]
    ts = msprime.sim_ancestry(samples=samples, demography=_demography(cfg),
                              sequence_length=cfg.chrom_length_bp, recombination_rate=cfg.recombination_rate,
                              random_seed=int(seeds[0]))
    ts = msprime.sim_mutations(ts, rate=cfg.mutation_rate, model=msprime.JC69(), random_seed=int(seeds[1]))
    ancestral, derived, n_mut = _site_alleles(ts)
    freq = _derived_counts(ts, (n_mut == 1) & (ancestral != derived)) / ts.num_samples
    keep = np.minimum(freq, 1 - freq) >= cfg.min_maf / 2  # NaN (multi-mutation) -> False
    ts = ts.delete_sites(np.flatnonzero(~keep))
    haps = np.ascontiguousarray(ts.genotype_matrix().T.astype(np.int8))  # (2 * n_founders, n_sites)
    pos = ts.tables.sites.position.astype(np.int64)
    return haps, pos, ancestral[keep], derived[keep]


def _transmit(haps: np.ndarray, parent: int, pos: np.ndarray, cfg: GenotypeSimConfig,
              mean_crossovers: float, rng: np.random.Generator) -> np.ndarray:
    """One gamete of founder ``parent``: (n_sites,) int8 mosaic of its two haplotypes.

    Notes
    -----
    Crossovers are Poisson(``mean_crossovers``) at uniform positions (no interference); the gamete
    starts on either parental haplotype with probability 1/2 and switches at each crossover.
    """
    cuts = np.sort(rng.uniform(0, cfg.chrom_length_bp, rng.poisson(mean_crossovers)))
    which = (np.searchsorted(cuts, pos, side="right") + rng.integers(2)) % 2
    return haps[2 * parent + which, np.arange(pos.size)]


def _cohort_dosage(haps: np.ndarray, pos: np.ndarray, plan: _CohortPlan, cfg: GenotypeSimConfig,
                   mean_crossovers: float, rng: np.random.Generator) -> np.ndarray:
    """(n_samples, n_sites) int8 derived-allele dosage of cohort members on one chromosome."""
    dosage = np.empty((plan.member_founder.size, pos.size), dtype=np.int8)
    is_founder = plan.member_founder >= 0
    f = plan.member_founder[is_founder]
    dosage[is_founder] = haps[2 * f] + haps[2 * f + 1]
    for m in np.flatnonzero(~is_founder):
        father, mother = plan.member_parents[m]
        dosage[m] = (_transmit(haps, father, pos, cfg, mean_crossovers, rng)
                     + _transmit(haps, mother, pos, cfg, mean_crossovers, rng))
    return dosage


def _orient_and_filter(dosage: np.ndarray, pos: np.ndarray, ancestral: np.ndarray, derived: np.ndarray,
                       chrom: int, start_bp: int, min_maf: float) -> tuple[np.ndarray, pd.DataFrame]:
    """Keep SNPs with cohort MAF >= ``min_maf`` and recode so that ``a1`` is the minor allele.

    Returns the (n_samples, n_kept) int8 dosage of ``a1`` and the variant table of the kept SNPs.
    """
    freq = dosage.mean(axis=0, dtype=np.float64) / 2  # derived-allele frequency
    keep = (np.minimum(freq, 1 - freq) >= min_maf) & (freq > 0) & (freq < 1)
    dosage, freq, pos = dosage[:, keep], freq[keep], pos[keep]
    ancestral, derived = ancestral[keep], derived[keep]
    flip = freq > 0.5  # a1 = the minor allele; at exactly 0.5 it stays the derived allele
    dosage[:, flip] = 2 - dosage[:, flip]
    pos_bp = start_bp + pos + 1
    variants = pd.DataFrame({
        "snp": [f"rs{chrom}{p:09d}" for p in pos_bp],
        "chrom": np.full(pos.size, chrom, dtype=np.int64),
        "pos_bp": pos_bp.astype(np.int64),
        "a1": np.where(flip, ancestral, derived),
        "a2": np.where(flip, derived, ancestral),
        "a1_freq": np.where(flip, 1 - freq, freq),
    })
    return dosage, variants


def simulate_genotypes(cfg: GenotypeSimConfig, seed: int, progress: Progress | None = None) -> GenotypeSim:
    """Simulate a cohort of ``cfg.n_samples`` genotyped individuals from two populations.

    Parameters
    ----------
    cfg : GenotypeSimConfig
        Sizes, demography, rates and relative counts.
    seed : int
        Seeds every random draw; the same seed and config give identical output.
    progress : callable, optional
        Called with a short message before each chromosome's long steps.

    Returns
    -------
    GenotypeSim
        ``dosage`` (n_samples, n_variants) int8 count of ``a1``, the variant table, each sample's
        population and the planted relative pairs.

    Notes
    -----
    Each chromosome is an independent msprime simulation (Hudson coalescent with recombination,
    Jukes-Cantor mutations on a discrete genome) of all founders; relatives come from a forward
    meiosis of founder haplotypes (see ``_transmit``). Ancestry and mutation seeds of every
    chromosome are drawn from one generator in a fixed order, so results are reproducible.
    """
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(seed)
    plan = _plan_cohort(cfg, rng)
    seeds = rng.integers(1, 2**31 - 1, size=(len(cfg.chromosomes), 2))
    mean_crossovers = cfg.crossovers_per_meiosis / len(cfg.chromosomes)  # equal chromosome lengths
    blocks, tables = [], []
    for c, (chrom, start_bp) in enumerate(zip(cfg.chromosomes, cfg.chrom_start_bp, strict=True)):
        say(f"chromosome {chrom}: coalescent of {plan.founder_pop.size} founders over "
            f"{cfg.chrom_length_bp / 1e6:g} Mb ({c + 1}/{len(cfg.chromosomes)})")
        haps, pos, ancestral, derived = _founder_haplotypes(cfg, plan.founder_pop, seeds[c])
        dosage = _cohort_dosage(haps, pos, plan, cfg, mean_crossovers, rng)
        dosage, variants = _orient_and_filter(dosage, pos, ancestral, derived, chrom, start_bp, cfg.min_maf)
        say(f"chromosome {chrom}: {variants.shape[0]:,} SNPs with MAF >= {cfg.min_maf:g}")
        blocks.append(dosage)
        tables.append(variants)
    return GenotypeSim(
        dosage=np.ascontiguousarray(np.concatenate(blocks, axis=1)),
        variants=pd.concat(tables, ignore_index=True),
        population=plan.population,
        relatives=plan.relatives,
        config=cfg,
    )
