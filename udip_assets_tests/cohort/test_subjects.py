"""Subjects: covariates at the kept visit, last usable visit, every drop with its reason."""

import numpy as np
import pandas as pd
import pytest

from udip_assets.cohort.covariates import covariates_at_visit, deduplicate_eids
from udip_assets.cohort.splits import SplitConfig
from udip_assets.cohort.subjects import build_subjects


def _covariate_table(eids):
    rng = np.random.default_rng(0)
    n = len(eids)
    t = pd.DataFrame({"eid": eids, "31-0.0": rng.integers(0, 2, n), "21000-0.0": 1001})
    for v in (2, 3):
        t[f"21003-{v}.0"] = 60.0 + v + np.arange(n)
        t[f"25735-{v}.0"] = 0.3
        t[f"54-{v}.0"] = 11025
    for i in range(1, 11):
        t[f"22009-0.{i}"] = rng.normal(size=n)
    return t


def _scans(rows):
    return pd.DataFrame(rows, columns=["subject_id", "visit", "path", "status", "error"])


@pytest.fixture
def cohort():
    eids = [str(1000 + i) for i in range(8)]
    scans = _scans(
        [(e, 2, f"/s/{e}_2", "ok", None) for e in eids]
        + [("1001", 3, "/s/1001_3", "ok", None),  # second visit, usable: kept
           ("1002", 3, "/s/1002_3", "unreadable", "truncated")]  # bad second visit: fall back to 2
    )
    scans.loc[scans["subject_id"] == "1003", ["status", "error"]] = ["empty", "all zeros"]
    table = _covariate_table(eids)
    table.loc[table["eid"] == "1004", "21003-2.0"] = np.nan
    table = pd.concat([table, table[table["eid"] == "1005"].assign(**{"21003-2.0": 99.0})])
    genotyped = [e for e in eids if e != "1006"]
    kinship = pd.DataFrame({"ID1": ["1000", "1001"], "ID2": ["1007", "1006"], "HetHet": 0.1, "IBS0": 0.0,
                            "Kinship": [0.25, 0.25]})
    return scans, table, genotyped, kinship


def test_each_problem_gives_its_own_reason(cohort):
    out = build_subjects(*cohort, SplitConfig(0.3, 0.2, seed=1)).set_index("subject_id")
    assert "no usable scan" in out.at["1003", "drop_reason"] and "empty" in out.at["1003", "drop_reason"]
    assert "21003-2.0" in out.at["1004", "drop_reason"]
    assert "appears 2 times" in out.at["1005", "drop_reason"]
    assert "no genotypes" in out.at["1006", "drop_reason"]
    # 1000 and 1007 are siblings: exactly one of them is dropped, naming the other.
    dropped = [s for s in ("1000", "1007") if not out.at[s, "kept"]]
    assert len(dropped) == 1
    other = {"1000": "1007", "1007": "1000"}[dropped[0]]
    assert other in out.at[dropped[0], "drop_reason"]
    # 1001's relative 1006 has no genotypes, so the pair does not cost 1001 its place.
    assert out.at["1001", "kept"]


def test_last_usable_visit_and_its_covariates(cohort):
    out = build_subjects(*cohort, SplitConfig(0.3, 0.2, seed=1)).set_index("subject_id")
    assert out.at["1001", "visit"] == 3 and out.at["1001", "age_years"] == pytest.approx(60.0 + 3 + 1)
    assert out.at["1002", "visit"] == 2 and out.at["1002", "n_visits"] == 2
    assert out.at["1002", "age_years"] == pytest.approx(60.0 + 2 + 2)


def test_only_kept_subjects_have_a_split(cohort):
    out = build_subjects(*cohort, SplitConfig(0.3, 0.2, seed=1))
    assert out.loc[out["kept"], "split"].isin(["train", "val", "inference"]).all()
    assert out.loc[~out["kept"], "split"].isna().all()
    assert out["subject_id"].is_unique


def test_identical_duplicate_rows_are_merged_silently():
    t = _covariate_table(["1", "2"])
    clean, conflicts = deduplicate_eids(pd.concat([t, t.iloc[[0]]]))
    assert conflicts == {} and clean["eid"].tolist() == ["1", "2"]


def test_visit_fields_read_per_instance():
    t = _covariate_table(["1", "2"])
    cov = covariates_at_visit(t, pd.Series(["1", "2"]), pd.Series([2, 3]))
    assert cov["age_years"].tolist() == [62.0, 64.0]
    assert cov["pc3"].tolist() == t["22009-0.3"].tolist()
    assert cov["missing"].isna().all()


def test_head_size_field_25000_is_read_per_visit_and_optional():
    t = _covariate_table(["1", "2"])
    without = covariates_at_visit(t, pd.Series(["1", "2"]), pd.Series([2, 3]))
    assert without["head_size_scaling"].isna().all() and without["missing"].isna().all()  # nobody dropped
    t["25000-2.0"], t["25000-3.0"] = [1.21, 1.35], [1.22, 1.36]
    cov = covariates_at_visit(t, pd.Series(["1", "2"]), pd.Series([2, 3]))
    assert cov["head_size_scaling"].tolist() == [1.21, 1.36]


def test_a_table_without_a_required_field_is_refused_naming_every_missing_column(tmp_path):
    """A renamed export ('age' for 21003-2.0, no sex column) used to drop every subject as 'missing'."""
    from udip_assets.cohort.covariates import read_ukbb_table
    from udip_assets.errors import CovariateError

    table = _covariate_table(["1000", "1001"]).rename(columns={"21003-2.0": "age", "21003-3.0": "age3"})
    table.drop(columns=["31-0.0"]).to_csv(tmp_path / "cov.csv", index=False)
    with pytest.raises(CovariateError) as err:
        read_ukbb_table(tmp_path / "cov.csv")
    message = str(err.value)
    assert "cov.csv cannot be used: no column for 2 required field(s): 21003-2.0 (age_years), 31-0.0 (sex)" in message
    assert "21003-2.0 for age" in message and "materialize ingest again" in message


def test_text_in_a_numeric_field_is_refused_naming_column_value_and_line_not_the_subject(tmp_path):
    """'sixty' as an age, 'F' as a sex: named by column, value and line (an eid is never in the message);
    empty cells and UK Biobank's negative codes are not text."""
    from udip_assets.cohort.covariates import read_ukbb_table
    from udip_assets.errors import CovariateError

    eids = ["1234567", "2345678", "3456789", "4567890"]
    table = _covariate_table(eids).astype({"21003-2.0": object, "31-0.0": object, "54-2.0": object})
    table.loc[1, "21003-2.0"] = "sixty"
    table.loc[[2, 3], "31-0.0"] = ["F", "M"]
    table.loc[0, "54-2.0"] = ""  # unknown: the subject is dropped later for it, not an error
    table.loc[3, "25735-2.0"] = -3  # a UK Biobank code is a number
    table.to_csv(tmp_path / "cov.csv", index=False)
    with pytest.raises(CovariateError) as err:
        read_ukbb_table(tmp_path / "cov.csv")
    message = str(err.value)
    assert "column 21003-2.0 (age_years) holds text where a number belongs: 'sixty' on 1 row(s), first on line(s) 3" \
        in message
    assert "column 31-0.0 (sex) holds text where a number belongs: 'F', 'M' on 2 row(s), first on line(s) 4, 5" \
        in message
    assert "54-2.0" not in message and "25735" not in message
    assert not any(e in message for e in eids)
    table.loc[1, "21003-2.0"], table.loc[[2, 3], "31-0.0"] = 61.0, [0, 1]
    table.to_csv(tmp_path / "cov.csv", index=False)
    assert len(read_ukbb_table(tmp_path / "cov.csv")) == 4


def test_conflicting_duplicate_rows_drop_the_subject_with_the_columns_that_differ():
    table = _covariate_table(["1000", "1001"])
    table = pd.concat([table, table.iloc[[1]].assign(**{"21003-2.0": 99.0})], ignore_index=True)
    clean, conflicts = deduplicate_eids(table)
    assert list(clean["eid"]) == ["1000"]
    assert conflicts["1001"].startswith("eid 1001 appears 2 times in the covariate table with different values "
                                        "(columns ['21003-2.0']); fix the export so each eid has one row")
