"""The ``udip`` command: make a synthetic cohort, run the pipeline, query the warehouse."""

from __future__ import annotations

import json
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
        paths.ensure_private_dir(paths.udip_home())  # subject-level data: the owner only
        spec = generate_cohort(cfg, paths.cohorts_dir() / name, force=force)
    except UdipConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"cohort {spec.name} ready at {spec.root} (cohort.yaml, scans/, genotypes/, truth.json)")


@main.command()
@click.option("--cohort", required=True, help="Cohort name (a folder under $UDIP_HOME/cohorts with cohort.yaml).")
@click.option("--select", "selection", default=None, help="Dagster asset selection, e.g. 'group:ingest'.")
@click.option("--train-count", type=click.IntRange(min=1), default=None,
              help="Train on this many subjects (the rest of the cohort, less --val-count, is the GWAS set); "
                   "default: the paper's split fractions.")
@click.option("--val-count", type=click.IntRange(min=0), default=None, help="Validation subjects (with --train-count).")
@click.option("--preset", default=None,
              help="Model preset: paper, demo or tiny (default: auto, by the cohort's grid: 1 mm paper, 2 mm demo).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (overrides the preset's).")
@click.option("--overrides", default=None,
              help='More ModelConfig / TrainConfig fields as a JSON object, e.g. \'{"enc_depth": 8}\'.')
@click.option("--sweep-every", type=click.IntRange(min=1), default=None,
              help="Count loci for the checkpoints of every N epochs (default: the sweep's, 10).")
def materialize(cohort: str, selection: str | None, train_count: int | None, val_count: int | None,
                preset: str | None, epochs: int | None, overrides: str | None, sweep_every: int | None) -> None:
    """Run the asset graph for one cohort, recorded in the Dagster instance under $UDIP_HOME/dagster."""
    from udip_assets.defs.run import materialize_cohort

    if not (paths.cohorts_dir() / cohort / "cohort.yaml").exists():
        raise click.ClickException(
            f"no cohort.yaml in {paths.cohorts_dir() / cohort}; run `udip synth --name {cohort}` or create one"
        )
    if val_count is not None and train_count is None:
        raise click.ClickException("--val-count needs --train-count")
    _refuse_invalid_cohort(paths.cohorts_dir() / cohort)
    run_config = knob_run_config(train_count, val_count, preset, epochs, overrides, sweep_every)
    result = materialize_cohort(cohort, selection=selection, run_config=run_config, on_event=_print_progress)
    for stage, key, run in result.runs:
        click.echo(f"{stage} [{key}]: {'ok' if run.success else 'FAILED'} (run {run.run_id})")
    for failure in result.failures():
        click.echo(f"FAILED {failure}", err=True)
    if not result.success:
        sys.exit(1)
    click.echo(f"materialized cohort {cohort}: {len(result.runs)} run(s)")


def _print_progress(stage: str, entry) -> None:
    """One line per step start, end or failure, failed check, and the steps' own log lines."""
    import logging
    from datetime import datetime

    event = entry.dagster_event
    when = datetime.fromtimestamp(entry.timestamp).strftime("%H:%M:%S")
    if event is None:
        if entry.level >= logging.INFO and entry.user_message:
            click.echo(f"{when} {stage} {entry.step_key or ''}: {entry.user_message}")
        return
    kind = event.event_type_value
    if kind in ("STEP_START", "STEP_SUCCESS"):
        click.echo(f"{when} {stage} {event.step_key}: {'started' if kind == 'STEP_START' else 'done'}")
    elif kind == "STEP_FAILURE":
        click.echo(f"{when} {stage} {event.step_key}: FAILED: {event.event_specific_data.error.message.strip()}",
                   err=True)
    elif kind == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
        check = event.event_specific_data
        click.echo(f"{when} {stage} check {check.check_name} on {check.asset_key.to_user_string()} failed "
                   f"({check.severity.value})", err=True)


def _refuse_invalid_cohort(folder: Path) -> None:
    """Exit with every problem of the folder's cohort.yaml listed, before any run starts."""
    from udip_assets.cohort.spec import check_cohort, format_problems

    _, problems = check_cohort(folder)
    if problems:
        raise click.ClickException(format_problems(problems) + "\nnothing was run")


@main.command()
@click.argument("cohort")
def check(cohort: str) -> None:
    """List every problem of a cohort's cohort.yaml (a name under $UDIP_HOME/cohorts, or a folder)."""
    folder = Path(cohort) if Path(cohort).is_dir() else paths.cohorts_dir() / cohort
    _refuse_invalid_cohort(folder)
    click.echo(f"{folder / 'cohort.yaml'}: ok")


@main.command("deploy-check")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path), default="deploy/k8s")
def deploy_check(folder: Path) -> None:
    """Check a Kubernetes deployment (its dagster.yaml and Helm values.yaml) against Dagster's config schema."""
    from udip_assets.cluster.k8s import check_deployment

    problems, placeholders = check_deployment(folder)
    if problems:
        raise click.ClickException("\n".join(problems))
    if placeholders:
        click.echo(f"checked with placeholders for {', '.join(placeholders)}: the pods must have them")
    click.echo(f"{folder}: ok (dagster.yaml and values.yaml validate against Dagster's config schema)")


def knob_run_config(train_count: int | None, val_count: int | None, preset: str | None, epochs: int | None,
                    overrides: str | None, sweep_every: int | None = None) -> dict:
    """Dagster run config for the split and model options of ``udip materialize`` (empty when none is given)."""
    ops: dict = {}
    if train_count is not None:
        ops["subjects"] = {"config": {"train_count": train_count, "val_count": val_count or 0}}
    try:
        fields = json.loads(overrides) if overrides else {}
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--overrides is not valid JSON ({exc}); give an object such as "
                                   '\'{"enc_depth": 8}\'') from exc
    if not isinstance(fields, dict):
        raise click.ClickException(f"--overrides must be a JSON object, got {overrides!r}")
    if epochs is not None:
        fields["epochs"] = epochs
    from udip_assets.defs.model import TYPED_OVERRIDES

    # ModelAssetConfig's typed fields where it has them (the launchpad shows them), the rest as JSON
    model: dict = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if k in TYPED_OVERRIDES}
    if preset is not None:
        model["preset"] = preset
    rest = {k: v for k, v in fields.items() if k not in TYPED_OVERRIDES}
    if rest:
        model["overrides_json"] = json.dumps(rest, sort_keys=True)
    if model:
        ops["vit_ae_model"] = {"config": model}
    if sweep_every is not None:
        ops["checkpoint_loci_sweep"] = {"config": {"every_epochs": sweep_every}}
    return {"ops": ops} if ops else {}


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
@click.option("--cohort", default=None, help="One cohort (default: every cohort, each with its selected model).")
@click.option("--model-id", default=None, help="Loci of this model (default: the model the loci sweep selected).")
@click.option("--method", type=click.Choice(["minp", "multivariate"]), default=None,
              help="Loci of one discovery method (default: both).")
@click.option("--novel", is_flag=True,
              help="Only loci that no reference locus or GWAS Catalog hit within 250 kb explains.")
@click.option("--csv", "as_csv", is_flag=True, help="Machine-readable CSV on stdout.")
def loci(cohort: str | None, model_id: str | None, method: str | None, novel: bool, as_csv: bool) -> None:
    """The genomic risk loci and their lead SNPs, with genes and GWAS Catalog traits (dbt's loci_annotated)."""
    table = "novel_loci" if novel else "loci_annotated"
    cohorts = [cohort] if cohort else _read("SELECT DISTINCT cohort FROM genomic_risk_loci ORDER BY 1", [])["cohort"]
    frames = []
    for name in cohorts:
        chosen = model_id or _selected_model_id(name)
        where, params = "cohort = ? AND model_id = ?", [name, chosen]
        if method:
            where, params = where + " AND method = ?", [*params, method]
        try:
            frames.append(_read(
                f"SELECT cohort, model_id, method, locus, chrom, start_bp, end_bp, top_snp, p, dim, n_lead_snps, "
                f"lead_snps, nearest_gene, overlapping_genes, catalog_traits FROM {table} WHERE {where} "
                "ORDER BY method, p", params))
        except Exception as exc:  # the dbt models are built by dbt_annotations
            raise click.ClickException(f"{table} cannot be read ({exc}); materialize the annotations "
                                       f"(udip materialize --cohort {name})") from exc
    import pandas as pd

    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if as_csv:
        frame.to_csv(sys.stdout, index=False)
        return
    if frame.empty:
        click.echo("(no loci)")
        return
    frame["p"] = frame["p"].map(lambda v: f"{v:.2e}")
    with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 250,
                           "display.max_colwidth", 40):
        click.echo(frame.to_string(index=False))
    click.echo(f"{len(frame)} loci" + (" (novel)" if novel else ""))


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
              help="Also run the same GWAS + clumping on the planted phenotypes measured in the images (the ceiling).")
@click.option("--ceiling", is_flag=True,
              help="Also score what the voxels hold and what a linear code as wide as the UDIPs (PCA of the "
                   "scans) keeps, and run that code through the same GWAS and clumping (~2 min on the demo).")
def truth(cohort: str, model_id: str | None, control: bool, ceiling: bool) -> None:
    """Score a synthetic cohort's genomic risk loci against its planted causal SNPs.

    A planted SNP is found when a locus span contains it; recall is over the planted SNPs that are
    detectable on the GWAS sample actually used (80 % power for the phenotype measured in the images at
    5e-8 / n_dims), precision is the share of loci with a planted SNP within 250 kb; both for the minP
    loci (the paper's method) and the multivariate loci (joint test of all dims). Then, per planted
    phenotype, how well the UDIPs encode it (cross-validated R2, best single dim) and the UDIPs' effective
    rank. With --control, those image phenotypes replace the UDIPs (same subjects, covariates, thresholds
    and clumping): what it finds and the UDIPs miss is lost in the representation, not in the genetics.
    With --ceiling, two more columns per phenotype: the cross-validated R2 of a ridge regression on
    every voxel (is it in the image at all?) and from the top n_dims principal components of the scans,
    the best linear code of the UDIPs' width for the model's own loss (would any code of that width keep
    it?); that code then goes through the same GWAS and clumping as the UDIPs.
    """
    from udip_assets.cohort.spec import load_cohort
    from udip_assets.cohort.synthetic import detectable_at
    from udip_assets.cohort.truth_check import load_truth, score_loci

    spec = load_cohort(paths.cohorts_dir() / cohort)
    if spec.truth is None:
        raise click.ClickException(f"cohort {cohort} has no truth file (only `udip synth` cohorts have one)")
    try:
        model_id = model_id or _selected_model_id(cohort)
        loci = _read("SELECT * FROM genomic_risk_loci WHERE cohort = ? AND model_id = ? ORDER BY \"GenomicLocus\"",
                     [cohort, model_id])
        sample = _truth_gwas_sample(cohort, model_id)
    except WarehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    n_gwas, n_dims = sample.phenotypes.shape
    planted = detectable_at(load_truth(spec.truth), n_gwas, n_dims)
    by_method = {m: loci[loci["method"].fillna("minp") == m] for m in ("minp", "multivariate")}
    scores = {m: score_loci(rows, planted) for m, rows in by_method.items()}
    click.echo(f"cohort {cohort}, model {model_id}: GWAS of {n_gwas} subjects x {n_dims} UDIP dims; "
               + ", ".join(f"{len(rows)} {m} loci" for m, rows in by_method.items()))
    click.echo(f"  {'snp':>14} {'position':<16} {'region':<12} {'kind':<6} {'R2 img':>6} {'power':>5}  "
               "detectable  minp    multivariate")
    for row in planted.sort_values(["chrom", "pos_bp"]).itertuples():
        found = ["found " if row.snp in scores[m].found else "missed" for m in scores]
        q = getattr(row, "variance_explained_image", row.variance_explained)
        click.echo(f"  {row.snp:>14} chr{row.chrom}:{row.pos_bp:<12} {row.region:<12} {row.kind:<6} {q:6.3f} "
                   f"{row.power:5.2f}  {'yes' if row.detectable else 'no ':<10}  {found[0]}  {found[1]}")
    for method, score in scores.items():
        click.echo(f"{method}: recall {score.n_found_detectable}/{score.n_detectable} detectable planted loci "
                   f"({_percent(score.recall)}); precision {score.n_true_loci}/{score.n_loci} loci with a planted "
                   f"SNP within 250 kb ({_percent(score.precision)})")
    encoding = _encoding_report(spec, sample, planted)
    _decoder_report(cohort, model_id)
    _planted_region_report(cohort, model_id, loci, planted, scores)
    if control:
        _truth_control(spec, sample, planted)
    if ceiling:
        _ceiling_report(cohort, spec, sample, planted, encoding)


@main.command()
@click.option("--cohort", required=True, help="Cohort whose PerDI maps to show.")
@click.option("--model-id", default=None, help="Model (default: the selected checkpoint's).")
@click.option("--dims", default=None, help="Comma-separated UDIP dims (default: every dim PerDI mapped).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Regions per dim.")
def perdi(cohort: str, model_id: str | None, dims: str | None, top: int) -> None:
    """Print the atlas regions each PerDI map touches most, per dim (the warehouse's perdi_regions)."""
    model_id = model_id or _selected_model_id(cohort)
    try:
        rows = _read("SELECT * FROM perdi_regions WHERE cohort = ? AND model_id = ? AND rank IS NOT NULL "
                     "ORDER BY dim, rank", [cohort, model_id])
        maps = _read("SELECT dim, chosen_because, symmetry, nifti_path FROM perdi_dims WHERE cohort = ? AND "
                     "model_id = ? ORDER BY dim", [cohort, model_id])
    except Exception as exc:  # the tables do not exist before the first PerDI run
        raise click.ClickException(f"no PerDI results for cohort {cohort}: {exc}; run `udip materialize --cohort "
                                   f"{cohort} --select 'key:perdi_maps or key:perdi_regions'`") from exc
    wanted = [int(d) for d in dims.split(",")] if dims else maps["dim"].tolist()
    unknown = sorted(set(wanted) - set(maps["dim"]))
    if unknown:
        raise click.ClickException(f"dims {unknown} have no PerDI map for model {model_id} (mapped: "
                                   f"{maps['dim'].tolist()}); set perdi_maps' config dims to map them")
    click.echo(f"cohort {cohort}, model {model_id}: {maps['chosen_because'].iloc[0] if len(maps) else ''}")
    cols = ["rank", "region", "hemisphere", "n_voxels", "fraction", "mean_t", "peak_t"]
    for d in wanted:
        info = maps[maps["dim"] == d].iloc[0]
        click.echo(f"\ndim {d}: symmetry {info['symmetry']:.2f}, map {info['nifti_path']}")
        click.echo(rows[rows["dim"] == d].head(top)[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def _read(query: str, params: list):
    from udip_assets.store.warehouse import read_frame

    return read_frame(paths.warehouse_path(), query, params)


def _selected_model_id(cohort: str) -> str:
    """The model the loci sweep selected for ``cohort`` (``model_selection``), else the one its loci are of."""
    swept = not _read("SELECT 1 FROM duckdb_tables() WHERE table_name = 'model_selection'", []).empty
    chosen = _read("SELECT model_id FROM model_selection WHERE cohort = ? AND selected", [cohort]) if swept else None
    if chosen is None or chosen.empty:
        chosen = _read("SELECT model_id FROM genomic_risk_loci WHERE cohort = ? LIMIT 1", [cohort])
    if chosen.empty:
        raise click.ClickException(f"no loci for cohort {cohort} yet; run `udip materialize --cohort {cohort}`")
    return str(chosen["model_id"].iloc[0])


def _truth_gwas_sample(cohort: str, model_id: str):
    """The GWAS sample of the pipeline's defaults (GwasAssetConfig), without importing the Dagster layer."""
    from udip_assets.cohort.gwas_inputs import gwas_sample
    from udip_assets.genetics.design import PAPER_CATEGORICAL, PAPER_NUMERIC, CovariateSpec

    subjects = _read("SELECT * FROM subjects WHERE cohort = ?", [cohort])
    udips = _read("SELECT * FROM udips WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    return gwas_sample(subjects, udips, CovariateSpec(numeric=PAPER_NUMERIC, categorical=PAPER_CATEGORICAL))


def _encoding_report(spec, sample, planted):
    """Per planted phenotype (as measured in the images): CV R2 from all UDIPs and the best single dim."""
    from udip_assets.cohort.truth_check import encoding_diagnostics, format_diagnostics, image_region_phenotypes
    from udip_assets.interpret.qc import effective_rank

    measured = image_region_phenotypes(spec.truth.with_name("truth_image_volumes.tsv"), planted)
    table = encoding_diagnostics(sample.phenotypes, measured)
    click.echo("how well the UDIPs encode each planted phenotype (GWAS subjects; truth used for evaluation only):")
    click.echo(format_diagnostics(table, effective_rank(sample.phenotypes.to_numpy())))
    return table


def _decoder_report(cohort: str, model_id: str) -> None:
    """How much of the subjects' departures from the cohort mean the decoder reproduces (reconstruction_qc)."""
    try:
        row = _read("SELECT * FROM udip_spectrum WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    except Exception:  # no reconstruction_qc yet
        row = None
    if row is None or row.empty or "deviation_r2" not in row or row["deviation_r2"].isna().all():
        click.echo("decoder spread: not measured yet (materialize reconstruction_qc)")
        return
    r = row.iloc[0]
    click.echo(f"decoder: its predictions reproduce {r.deviation_r2:.1%} of {int(r.decoder_n_subjects)} GWAS-set "
               f"subjects' departures from the cohort mean image; between-subject variance per brain voxel "
               f"{r.recon_between_variance:.2e} in the predictions against {r.input_between_variance:.2e} in "
               "the inputs (a decoder near the cohort mean gives weak, diffuse PerDI maps)")


def _planted_region_report(cohort: str, model_id: str, loci, planted, scores) -> None:
    """Per found planted locus: does the PerDI map of its dim rank the planted region among its top 3?"""
    from udip_assets.interpret.atlas import planted_region_rank

    try:
        regions = _read("SELECT * FROM perdi_regions WHERE cohort = ? AND model_id = ?", [cohort, model_id])
        best_dim = _read("SELECT snp, dim FROM minp WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    except Exception:  # no PerDI run yet
        click.echo("planted-region check: no PerDI maps yet (materialize perdi_maps and perdi_regions)")
        return
    hits, checked = 0, 0
    click.echo("planted-region check (PerDI map of the locus dim ranks the planted region in its top 3):")
    dim_of = dict(zip(best_dim["snp"], best_dim["dim"], strict=True))
    for method, score in scores.items():
        rows = loci[loci["method"].fillna("minp") == method]
        for snp in sorted(score.found):
            truth = planted[planted["snp"] == snp].iloc[0]
            locus = rows[(rows["chr"].astype(str) == str(truth.chrom)) & (rows["start"] <= truth.pos_bp)
                         & (rows["end"] >= truth.pos_bp)]
            if locus.empty:
                continue
            top = locus.iloc[0]
            dim = int(top["dim"]) if method == "minp" and top["dim"] == top["dim"] else dim_of.get(top["rsID"])
            table = regions[regions["dim"] == dim] if dim is not None else regions.iloc[0:0]
            rank = planted_region_rank(table, truth.region) if len(table) else None
            checked += 1
            hits += rank is not None and rank <= 3
            click.echo(f"  {method:<12} {snp:>14} {truth.region:<12} dim {dim}: "
                       + (f"rank {rank}" if rank is not None else "no map / not ranked"))
    click.echo(f"planted-region hit rate: {hits}/{checked}" + (f" ({hits / checked:.0%})" if checked else ""))


def _truth_control(spec, sample, planted) -> None:
    """GWAS + clumping of the image-measured planted phenotypes on the subjects and covariates of the UDIP GWAS."""
    from udip_assets.cohort.gwas_inputs import GwasSample
    from udip_assets.cohort.model_selection import loci_of_sample
    from udip_assets.cohort.truth_check import image_region_phenotypes, score_loci
    from udip_assets.genetics.clump import ClumpConfig, genome_wide_threshold
    from udip_assets.genetics.gwas import GwasConfig

    measured = image_region_phenotypes(spec.truth.with_name("truth_image_volumes.tsv"), planted)
    phenotypes = measured.reindex(sample.phenotypes.index)
    control = GwasSample(phenotypes=phenotypes, covariates=sample.covariates, n_excluded=sample.n_excluded)
    same_threshold = ClumpConfig(sig_p=genome_wide_threshold(sample.phenotypes.shape[1]))  # as the UDIP GWAS
    loci, _ = loci_of_sample(control, spec.genotypes, GwasConfig(), same_threshold, ld_method="haplotype")
    score = score_loci(loci, planted)
    click.echo(f"control (the planted phenotypes measured in the images of the same {len(phenotypes)} subjects, "
               f"{phenotypes.shape[1]} phenotypes, same covariates and thresholds): {len(loci)} loci, recall "
               f"{score.n_found_detectable}/{score.n_detectable} ({_percent(score.recall)}), precision "
               f"{score.n_true_loci}/{score.n_loci}")


def _ceiling_report(cohort: str, spec, sample, planted, encoding) -> None:
    """What the voxels hold and what a linear code as wide as the UDIPs keeps, and that code's loci."""
    from udip_assets.cohort.image_ceiling import ceiling_table, image_gram
    from udip_assets.cohort.truth_check import image_region_phenotypes, score_loci
    from udip_assets.genetics.clump import ClumpConfig, genome_wide_threshold
    from udip_assets.genetics.discovery import discover_loci
    from udip_assets.genetics.gwas import GwasConfig

    caches = _read("SELECT subject_id, cache_path FROM preprocessed_scans WHERE cohort = ? AND status = 'ok'",
                   [cohort]).set_index("subject_id")["cache_path"]
    ids = [str(s) for s in sample.phenotypes.index]
    missing = sorted(set(ids) - set(caches.index.astype(str)))
    if missing:
        raise click.ClickException(f"{len(missing)} GWAS subjects have no preprocessed scan (e.g. {missing[:3]}); "
                                   f"re-materialize preprocessed_scans for cohort {cohort}")
    caches.index = caches.index.astype(str)
    n_dims = sample.phenotypes.shape[1]
    measured = image_region_phenotypes(spec.truth.with_name("truth_image_volumes.tsv"), planted)
    gram = image_gram(list(caches.loc[ids]), show_progress=True)
    table, codes = ceiling_table(gram, ids, measured, n_components=n_dims)
    table = table.merge(encoding[["target", "cv_r2"]], on="target")
    pca = f"PCA-{n_dims}"
    click.echo(f"what the images hold (cross-validated R2, the same {len(ids)} subjects): {pca} is the {n_dims}-number "
               "linear code of least squared reconstruction error (principal components of the scans: the most a "
               f"linear autoencoder as wide as the UDIPs keeps), voxels a ridge regression on all {gram.n_voxels} "
               "brain voxels (what is in the image)")
    width = max(len(t) for t in [*table["target"], "target"])
    click.echo(f"  {'target':<{width}}  UDIPs  {pca:>7}  voxels")
    for row in table.itertuples():
        click.echo(f"  {row.target:<{width}}  {row.cv_r2:5.2f}  {row.pca_cv_r2:7.2f}  {row.voxels_cv_r2:6.2f}")
    covariates = sample.covariates.set_axis(sample.phenotypes.index.astype(str)).loc[codes.index]
    configs = {"minp": ClumpConfig(sig_p=genome_wide_threshold(n_dims)), "multivariate": ClumpConfig(sig_p=5e-8)}
    found = discover_loci(spec.genotypes, codes, covariates, GwasConfig(), configs)
    for method, result in found.clumps.items():
        score = score_loci(result.loci, planted)
        click.echo(f"{pca} code, same GWAS and clumping, {method}: recall "
                   f"{score.n_found_detectable}/{score.n_detectable} ({_percent(score.recall)}); precision "
                   f"{score.n_true_loci}/{score.n_loci}")


def _percent(fraction: float) -> str:
    return "n/a" if fraction != fraction else f"{fraction:.0%}"  # NaN: nothing to divide by


def _register_gwas() -> None:
    # the standalone engine lives with the genetics code; imported here so `udip gwas` is one command
    from udip_assets.genetics.gwas_cli import gwas_command

    main.add_command(gwas_command, "gwas")


_register_gwas()


if __name__ == "__main__":
    main()
