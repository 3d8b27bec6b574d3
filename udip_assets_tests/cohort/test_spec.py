"""cohort.yaml: every problem listed at once (file, key, expected, found, fix); a valid one loads."""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from udip_assets.cli import main
from udip_assets.cohort.spec import COHORT_FILE, check_cohort, load_cohort
from udip_assets.errors import CohortSpecError


def _broken(folder):
    folder.mkdir()
    (folder / "covariates.csv").write_text("id,21003-2.0\n1,60\n")
    (folder / COHORT_FILE).write_text(yaml.safe_dump({
        "name": folder.name, "resolution_mm": 3, "scans": {"dir": "scans"}, "covariates": "covariates.csv",
        "relatedness": "nowhere.dat"}))
    return folder


def test_every_problem_is_listed_with_key_expected_found_and_fix(tmp_path):
    folder = _broken(tmp_path / "bad")
    spec, problems = check_cohort(folder)
    assert spec is None
    by_key = {p.key: p for p in problems}
    assert set(by_key) == {"genotypes", "resolution_mm", "scans.dir", "relatedness", "covariates"}
    assert by_key["resolution_mm"].found == "3" and "UK Biobank" in by_key["resolution_mm"].expected
    assert "does not exist" in by_key["scans.dir"].found and str(folder / "scans") in by_key["scans.dir"].found
    assert "eid" in by_key["covariates"].expected and "id" in by_key["covariates"].found
    assert all(p.file == folder / COHORT_FILE and p.fix for p in problems)
    with pytest.raises(CohortSpecError, match="5 problem") as err:
        load_cohort(folder)
    assert len(err.value.problems) == 5 and "genotypes.plink" in by_key["genotypes"].fix + by_key["genotypes"].expected


def test_a_covariate_table_lacking_fields_is_a_problem_before_any_run(tiny_cohort, tmp_path):
    """Only its header is read: a renamed age column and no sex column are named, with the fix."""
    folder = tmp_path / "renamed"
    shutil.copytree(tiny_cohort.root, folder, ignore=shutil.ignore_patterns("scans"))
    (folder / "scans").symlink_to(tiny_cohort.root / "scans")
    table = pd.read_csv(folder / "covariates.csv", dtype=str)
    table.rename(columns={c: c.replace("21003-", "age-") for c in table.columns}).drop(columns=["31-0.0"]).to_csv(
        folder / "covariates.csv", index=False)
    spec, problems = check_cohort(folder)
    assert spec is None and [p.key for p in problems] == ["covariates"]
    assert problems[0].found == "covariates.csv without 21003-2.0 (age_years), 31-0.0 (sex)"
    assert "UK Biobank" in problems[0].expected and "rename" in problems[0].fix


def test_an_empty_cohort_is_refused_before_any_run_naming_each_empty_input(tiny_cohort, tmp_path):
    """No scan folders, a covariate header with no rows, an empty .fam: three problems, not a run that
    ingests nothing and fails in training."""
    folder = tmp_path / "empty"
    shutil.copytree(tiny_cohort.root, folder, ignore=shutil.ignore_patterns("scans"))
    (folder / "scans").mkdir()
    (folder / "scans" / "notes.txt").write_text("downloads pending\n")
    header = (folder / "covariates.csv").read_text().splitlines()[0]
    (folder / "covariates.csv").write_text(header + "\n\n")
    fam = tiny_cohort.genotypes.with_name(tiny_cohort.genotypes.name + ".fam")
    (folder / fam.relative_to(tiny_cohort.root)).write_text("")
    spec, problems = check_cohort(folder)
    assert spec is None
    found = {p.key: p.found for p in problems}
    assert set(found) == {"scans.dir", "covariates", "genotypes.plink"}, found
    assert found["scans.dir"].endswith("scans holds none") and found["covariates"].endswith("(header only)")
    assert found["genotypes.plink"].endswith(".fam (empty)")
    assert all(p.fix for p in problems)


def test_malformed_yaml_and_missing_file_are_problems_not_tracebacks(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / COHORT_FILE).write_text("name: [unclosed\n")
    assert [p.key for p in check_cohort(tmp_path / "a")[1]] == ["(file)"]
    assert "no such file" in check_cohort(tmp_path / "none")[1][0].found


def test_the_synthetic_cohort_is_valid(tiny_cohort):
    spec, problems = check_cohort(tiny_cohort.root)
    assert problems == [] and spec == load_cohort(tiny_cohort.root)


def test_udip_check_and_materialize_refuse_an_invalid_cohort_before_any_run(udip_home):
    folder = _broken(udip_home / "cohorts" / "refused")
    try:
        out = CliRunner().invoke(main, ["check", "refused"])
        assert out.exit_code != 0
        for text in ("5 problem(s)", "resolution_mm", "found 3", "genotypes", "scans.dir", "fix:"):
            assert text in out.output, (text, out.output)
        from udip_assets.defs.run import ensure_dagster_home

        ensure_dagster_home()
        instance = dg.DagsterInstance.get()  # the CLI's instance (DAGSTER_HOME under UDIP_HOME)
        runs_before = len(instance.get_run_records())
        out = CliRunner().invoke(main, ["materialize", "--cohort", "refused"])
        assert out.exit_code != 0 and "nothing was run" in out.output and "resolution_mm" in out.output
        assert len(instance.get_run_records()) == runs_before
        assert not instance.has_dynamic_partition("cohort", "refused")
    finally:
        shutil.rmtree(folder)
