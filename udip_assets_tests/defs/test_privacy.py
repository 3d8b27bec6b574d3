"""Privacy: the home is the owner's only; run records (Dagster events, logs) carry counts, never identifiers."""

from __future__ import annotations

import stat

import pandas as pd
from dagster._serdes import serialize_value

from udip_assets.defs.resources import UdipHome
from udip_assets.paths import without_subject_ids
from udip_assets.store.schema import GENES
from udip_assets.store.warehouse import snapshot_path
from udip_assets_tests.privacy_scan import cohort_ids, find_ids, id_tokens


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_home_and_its_warehouse_are_the_owners_only(tmp_path):
    (tmp_path / "shared").mkdir(mode=0o755)
    home = UdipHome(home=str(tmp_path / "shared" / "lab" / "udip"))
    home.write(GENES, pd.DataFrame({"cohort": "c", "name": ["G"], "chrom": "1", "start_bp": 1, "end_bp": 2}),
               cohort="c")
    root = home.root()
    assert _mode(root) == 0o700 and _mode(root.parent) == 0o700  # both folders udip made
    assert _mode(tmp_path / "shared") == 0o755  # a folder the user made keeps its mode
    assert _mode(home.warehouse_path()) == 0o600 and _mode(snapshot_path(home.warehouse_path())) == 0o600


def test_identifiers_are_masked_as_whole_tokens():
    ids = {"1234567", "2345678"}
    assert (without_subject_ids("related to 1234567 (kinship 0.120 > 0.0884); and 1 other", ids)
            == "related to <subject> (kinship 0.120 > 0.0884); and 1 other")
    assert without_subject_ids("scans/1234567_20252_2_0/T1.nii.gz", ids) == "scans/<subject>_20252_2_0/T1.nii.gz"
    assert without_subject_ids("id 12345678 is not one", ids) == "id 12345678 is not one"


def test_the_scan_finds_identifiers_but_not_the_fractions_of_timestamps(tmp_path):
    """An eid as a token, in a file name, or cast to a float is found; the seven digits after a
    timestamp's point (an event log has thousands) are not an eid."""
    ids = {"6454554", "1234567"}
    (tmp_path / "events.txt").write_text('"timestamp": 1796197712.6454554, "x": 0.6454554')
    assert find_ids([tmp_path], ids) == []
    for text in ("subject 1234567.", "scans/1234567_20252_2_0.nii.gz", "eid=1234567.0", "[6454554, 1]"):
        (tmp_path / "events.txt").write_text(text)
        assert len(find_ids([tmp_path], ids)) == 1, text
    assert [m.group(0) for m in id_tokens("a1234567 1234567b 12.5")] == ["a1234567", "1234567b", "12"]


def test_the_ingest_event_log_of_a_faulty_cohort_names_no_subject(ingested):
    """The tiny cohort has unreadable scans, duplicate eids, relatives and missing covariates: every one is
    reported in the event log as a count and a reason, and none by its eid."""
    spec, _, instance, _ = ingested
    ids = cohort_ids(spec.root)
    assert len(ids) >= 60
    texts = [serialize_value(e) for run in instance.get_runs() for e in instance.all_logs(run.run_id)]
    assert any("drop_reasons" in t for t in texts) and any("scans are not usable" in t for t in texts)
    token_ids = [t for t in texts if ids & {m.group(0) for m in id_tokens(t)}]
    assert not token_ids, token_ids[0][:2000]
