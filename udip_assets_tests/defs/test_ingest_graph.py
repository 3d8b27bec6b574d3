"""The ingest graph, materialized in-process on the tiny cohort: real Dagster, real DuckDB."""

from __future__ import annotations

import json

import dagster as dg

from udip_assets.defs.run import materialize_cohort
from udip_assets.store.warehouse import read_frame


def test_definitions_load():
    from udip_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"scan_manifest", "subjects", "preprocessed_scans"} <= keys


def test_every_fault_is_recorded_with_its_reason(ingested):
    spec, db, _, _ = ingested
    faults = json.loads((spec.root / "faults.json").read_text())
    scans = read_frame(db, "SELECT subject_id, visit, status, error FROM scans WHERE cohort = 'tiny'")
    status = {(r.subject_id, r.visit): (r.status, r.error) for r in scans.itertuples()}
    expected = {"truncated_gz": "unreadable", "wrong_grid": "wrong_grid", "nan_values": "non_finite",
                "all_zero": "empty"}
    for fault, want in expected.items():
        (eid,) = faults[fault]
        got, error = status[(eid, 2)]
        assert got == want, fault
        assert eid in error, f"the {fault} message should name the file: {error}"
    subjects = read_frame(db, "SELECT subject_id, kept, drop_reason FROM subjects WHERE cohort = 'tiny'")
    reason = dict(zip(subjects["subject_id"], subjects["drop_reason"], strict=True))
    assert "no genotypes" in reason[faults["no_genotypes"][0]]
    assert "appears 2 times" in reason[faults["duplicated_eid"][0]]


def test_good_scans_go_through(ingested):
    spec, db, _, _ = ingested
    scans = read_frame(db, "SELECT status, count(*) AS n FROM scans WHERE cohort = 'tiny' GROUP BY 1")
    n_files = len(list((spec.root / "scans").glob("*/T1/T1_brain_to_MNI.nii.gz")))
    assert scans["n"].sum() == n_files
    assert scans.set_index("status").at["ok", "n"] == n_files - 4
    kept = read_frame(db, "SELECT count(*) AS n FROM subjects WHERE cohort = 'tiny' AND kept")["n"].item()
    cached = read_frame(db, "SELECT count(*) AS n FROM preprocessed_scans "
                            "WHERE cohort = 'tiny' AND status = 'ok'")["n"].item()
    assert kept >= 45 and cached == kept


def test_checks_pass(ingested):
    *_, result = ingested
    results = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert results == {"most_scans_usable": True, "kept_subjects_unrelated": True, "no_subject_in_two_splits": True,
                       "caches_are_zscored": True}


def test_rematerializing_does_not_duplicate_rows(ingested):
    _, db, instance, _ = ingested
    sql = ("SELECT (SELECT count(*) FROM scans) a, (SELECT count(*) FROM subjects) b, "
           "(SELECT count(*) FROM preprocessed_scans) c")
    before = read_frame(db, sql).iloc[0].tolist()
    assert materialize_cohort("tiny", selection="group:ingest", instance=instance).success
    assert read_frame(db, sql).iloc[0].tolist() == before


def test_kinship_check_uses_the_configured_threshold(ingested):
    """SubjectsConfig.kinship_threshold drives the check too (it hard-coded 0.0884)."""
    from udip_assets.genetics.relatedness import read_ukb_rel

    spec, db, instance, _ = ingested
    try:
        result = materialize_cohort("tiny", selection="key:subjects", instance=instance,
                                    run_config={"ops": {"subjects": {"config": {"kinship_threshold": 0.3}}}})
        check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "kept_subjects_unrelated")
        assert check.passed and check.metadata["kinship_threshold"].value == 0.3
        kept = set(read_frame(db, "SELECT subject_id FROM subjects WHERE cohort = 'tiny' AND kept")["subject_id"])
        rel = read_ukb_rel(spec.relatedness)
        both = rel[rel["ID1"].astype(str).isin(kept) & rel["ID2"].astype(str).isin(kept)]
        assert (both["Kinship"] > 0.0884).any()  # relatives kept together: 0.0884 would have failed the check
    finally:
        assert materialize_cohort("tiny", selection="key:subjects", instance=instance).success


def test_a_failed_preprocessing_is_a_row_with_its_reason(ingested):
    """A scan that passed the manifest but cannot be preprocessed: status 'failed', the file in the reason,
    left out of training; once the file is good again the next run preprocesses it."""
    spec, db, instance, _ = ingested
    sid, scan = read_frame(db, "SELECT subject_id, scan_path FROM subjects WHERE cohort = 'tiny' AND kept "
                               "ORDER BY subject_id LIMIT 1").iloc[0]
    from pathlib import Path

    path = Path(scan)
    good = path.read_bytes()
    try:
        path.write_bytes(b"not a gzip file")  # newer than its cache: preprocessed again, and fails
        result = materialize_cohort("tiny", selection="key:preprocessed_scans", instance=instance)
        assert result.success  # one bad scan does not stop the cohort
        row = read_frame(db, f"SELECT * FROM preprocessed_scans WHERE cohort = 'tiny' AND subject_id = '{sid}'")
        assert row["status"].item() == "failed" and str(path) in row["reason"].item()
        assert row["cache_path"].isna().item()
        from udip_assets.defs.model import split_scans
        from udip_assets.defs.resources import UdipHome

        usable = split_scans(UdipHome(home=str(db.parent)), "tiny", ("train", "val", "inference"))
        assert sid not in set(usable["subject_id"])
    finally:
        path.write_bytes(good)
    assert materialize_cohort("tiny", selection="key:preprocessed_scans", instance=instance).success
    row = read_frame(db, "SELECT status, reason FROM preprocessed_scans WHERE cohort = 'tiny' "
                         f"AND subject_id = '{sid}'")
    assert row["status"].item() == "ok" and row["reason"].isna().item()
