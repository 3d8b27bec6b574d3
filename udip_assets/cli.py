"""The ``udip`` command: make a synthetic cohort, run the pipeline, query the warehouse."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from udip_assets import paths
from udip_assets.errors import UdipConfigError, WarehouseError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """udip: brain MRI -> ViT-UDIPs -> GWAS -> loci. State lives in $UDIP_HOME (default ./.udip)."""


@main.command()
@click.option("--name", default="demo", show_default=True, help="Cohort name (folder under $UDIP_HOME/cohorts).")
@click.option("--subjects", "n_subjects", default=1200, show_default=True, type=int, help="Number of subjects.")
@click.option("--resolution", default=2, show_default=True, type=click.Choice(["1", "2"]),
              help="Voxel size in mm: 1 = UK Biobank grid 182x218x182, 2 = fast 91x109x91.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed; the same seed gives the same files.")
@click.option("--with-faults", is_flag=True, help="Add realistic damage (truncated .gz, wrong grid, NaNs, ...).")
@click.option("--force", is_flag=True, help="Regenerate even if the cohort exists with other settings.")
def synth(name: str, n_subjects: int, resolution: str, seed: int, with_faults: bool, force: bool) -> None:
    """Generate a synthetic UK Biobank-like cohort with planted causal SNPs (truth.json)."""
    from udip_assets.cohort.synth_build import generate_cohort
    from udip_assets.cohort.synthetic import SynthConfig

    try:
        cfg = SynthConfig(name=name, n_subjects=n_subjects, resolution_mm=int(resolution), seed=seed,
                          with_faults=with_faults)
        spec = generate_cohort(cfg, paths.cohorts_dir() / name, force=force)
    except UdipConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"cohort {spec.name} ready at {spec.root} (cohort.yaml, scans/, genotypes/, truth.json)")


@main.command()
@click.option("--cohort", required=True, help="Cohort name (a folder under $UDIP_HOME/cohorts with cohort.yaml).")
@click.option("--select", "selection", default=None, help="Dagster asset selection, e.g. 'group:ingest'.")
def materialize(cohort: str, selection: str | None) -> None:
    """Run the asset graph for one cohort, recorded in the Dagster instance under $UDIP_HOME/dagster."""
    from udip_assets.defs.run import materialize_cohort

    if not (paths.cohorts_dir() / cohort / "cohort.yaml").exists():
        raise click.ClickException(
            f"no cohort.yaml in {paths.cohorts_dir() / cohort}; run `udip synth --name {cohort}` or create one"
        )
    result = materialize_cohort(cohort, selection=selection)
    for stage, key, run in result.runs:
        click.echo(f"{stage} [{key}]: {'ok' if run.success else 'FAILED'} (run {run.run_id})")
    for failure in result.failures():
        click.echo(f"FAILED {failure}", err=True)
    if not result.success:
        sys.exit(1)
    click.echo(f"materialized cohort {cohort}: {len(result.runs)} run(s)")


@main.command()
@click.argument("query")
@click.option("--csv", "as_csv", is_flag=True, help="Machine-readable CSV on stdout.")
@click.option("--db", type=click.Path(path_type=Path), default=None, help="Warehouse file (default $UDIP_HOME).")
def sql(query: str, as_csv: bool, db: Path | None) -> None:
    """Run a read-only SQL QUERY against the warehouse and print the result."""
    import duckdb

    from udip_assets.store.warehouse import connect

    try:
        with connect(db or paths.warehouse_path(), read_only=True, lock_timeout_s=30) as con:
            frame = con.execute(query).df()
    except WarehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from exc
    if as_csv:
        frame.to_csv(sys.stdout, index=False)
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            click.echo(frame.to_string(index=False) if len(frame) else "(no rows)")


@main.command()
def where() -> None:
    """Print where results live and how to look at them."""
    home = paths.udip_home()
    click.echo(f"UDIP_HOME      {home}")
    click.echo(f"warehouse      {paths.warehouse_path()}   (udip sql \"SELECT * FROM scans LIMIT 5\")")
    click.echo(f"cohorts        {paths.cohorts_dir()}")
    click.echo(f"artifacts      {paths.artifacts_dir()}")
    click.echo("Dagster UI     make ui   (then open http://127.0.0.1:3000)")


@main.command()
@click.option("--cohort", default="demo", show_default=True, help="A synthetic cohort (one with a truth.json).")
@click.option("--model-id", default=None, help="Loci of this model (default: the selected checkpoint's).")
@click.option("--control", is_flag=True,
              help="Also run the same GWAS + clumping on the generator's true region volumes (the ceiling).")
def truth(cohort: str, model_id: str | None, control: bool) -> None:
    """Score a synthetic cohort's genomic risk loci against its planted causal SNPs.

    A planted SNP is found when a locus span contains it; recall is over the SNPs the truth file marks
    detectable, precision is the share of loci with a planted SNP within 250 kb. With --control, the
    GWAS subjects' true region log-volumes replace the UDIPs (same subjects, covariates, thresholds and
    clumping): what it finds and the UDIPs miss is lost in the representation, not in the genetics.
    """
    from udip_assets.cohort.spec import load_cohort
    from udip_assets.cohort.truth_check import load_truth, score_loci
    from udip_assets.store.warehouse import read_frame

    spec = load_cohort(paths.cohorts_dir() / cohort)
    if spec.truth is None:
        raise click.ClickException(f"cohort {cohort} has no truth file (only `udip synth` cohorts have one)")
    db = paths.warehouse_path()
    try:
        if model_id is None:
            chosen = read_frame(db, "SELECT model_id FROM checkpoints WHERE cohort = ? AND selected "
                                    "ORDER BY created_at DESC LIMIT 1", [cohort])
            if chosen.empty:
                chosen = read_frame(db, "SELECT model_id FROM genomic_risk_loci WHERE cohort = ? LIMIT 1", [cohort])
            if chosen.empty:
                raise click.ClickException(f"no loci for cohort {cohort} yet; run `udip materialize --cohort {cohort}`")
            model_id = str(chosen["model_id"].iloc[0])
        loci = read_frame(db, 'SELECT "GenomicLocus", chr, start, "end", p, "nLeadSNPs", dim, dims FROM '
                              'genomic_risk_loci WHERE cohort = ? AND model_id = ? ORDER BY "GenomicLocus"',
                          [cohort, model_id])
    except WarehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    planted = load_truth(spec.truth)
    score = score_loci(loci, planted)
    click.echo(f"cohort {cohort}, model {model_id}: {len(loci)} genomic risk loci")
    for row in planted.sort_values(["chrom", "pos_bp"]).itertuples():
        status = "found" if row.snp in score.found else "missed"
        click.echo(f"  {row.snp:>14} chr{row.chrom}:{row.pos_bp:<10} {row.region:<12} effect {row.effect:+.2f} "
                   f"{'detectable' if row.detectable else 'weak      '} {status}")
    click.echo(f"recall {score.n_found_detectable}/{score.n_detectable} detectable planted loci "
               f"({_percent(score.recall)}); precision {score.n_true_loci}/{score.n_loci} loci with a planted SNP "
               f"within 250 kb ({_percent(score.precision)})")
    if control:
        _truth_control(cohort, spec, model_id, planted)


def _truth_control(cohort: str, spec, model_id: str, planted) -> None:
    """GWAS + clumping of the true region volumes on the subjects and covariates of the UDIP GWAS."""
    from udip_assets.cohort.gwas_inputs import GwasSample, gwas_sample
    from udip_assets.cohort.model_selection import loci_of_sample
    from udip_assets.cohort.truth_check import score_loci, true_region_phenotypes
    from udip_assets.genetics.clump import ClumpConfig
    from udip_assets.genetics.design import PAPER_CATEGORICAL, PAPER_NUMERIC, CovariateSpec
    from udip_assets.genetics.gwas import GwasConfig
    from udip_assets.store.warehouse import read_frame

    db = paths.warehouse_path()
    subjects = read_frame(db, "SELECT * FROM subjects WHERE cohort = ?", [cohort])
    udips = read_frame(db, "SELECT * FROM udips WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    # the pipeline's defaults (GwasAssetConfig, LociConfig), without importing the Dagster layer
    sample = gwas_sample(subjects, udips, CovariateSpec(numeric=PAPER_NUMERIC, categorical=PAPER_CATEGORICAL))
    volumes = true_region_phenotypes(spec.truth.with_name("truth_subjects.csv")).reindex(sample.phenotypes.index)
    control = GwasSample(phenotypes=volumes, covariates=sample.covariates, n_excluded=sample.n_excluded)
    loci, _ = loci_of_sample(control, spec.genotypes, GwasConfig(), ClumpConfig(), ld_method="haplotype")
    score = score_loci(loci, planted)
    click.echo(f"control (true region volumes of the same {len(volumes)} subjects, {volumes.shape[1]} phenotypes, "
               f"same covariates and thresholds): {len(loci)} loci, recall {score.n_found_detectable}/"
               f"{score.n_detectable} ({_percent(score.recall)}), precision {score.n_true_loci}/{score.n_loci}")


def _percent(fraction: float) -> str:
    return "n/a" if fraction != fraction else f"{fraction:.0%}"  # NaN: nothing to divide by


def _register_gwas() -> None:
    # the standalone engine lives with the genetics code; imported here so `udip gwas` is one command
    from udip_assets.genetics.gwas_cli import gwas_command

    main.add_command(gwas_command, "gwas")


_register_gwas()


if __name__ == "__main__":
    main()
