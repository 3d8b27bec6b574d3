"""Atomic writes: the rename happens only on success, failures leave the old file and no temporary,
temporaries are unique and keep the real extension, and the thin writers round-trip."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pandas as pd
import pytest

from udip_assets.atomic import atomic_path, write_bytes_atomic, write_text_atomic, write_tsv_atomic


def test_success_renames_onto_the_destination(tmp_path):
    dst = tmp_path / "table.txt"
    with atomic_path(dst) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".table.txt.") and tmp.name.endswith(".tmp")
        assert tmp.exists() and not dst.exists()
        tmp.write_text("new")
    assert dst.read_text() == "new"
    assert os.listdir(tmp_path) == ["table.txt"]


@pytest.mark.parametrize("error", [ValueError("bad row"), KeyboardInterrupt()])
def test_an_exception_in_the_block_keeps_the_old_file_and_no_temporary(tmp_path, error):
    dst = tmp_path / "table.txt"
    dst.write_text("old")
    with pytest.raises(type(error)):
        with atomic_path(dst) as tmp:
            tmp.write_text("half")
            raise error
    assert dst.read_text() == "old"
    assert os.listdir(tmp_path) == ["table.txt"]


def test_a_failed_rename_removes_the_temporary(tmp_path, monkeypatch):
    dst = tmp_path / "table.txt"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(dst, "new")
    assert os.listdir(tmp_path) == []


def test_concurrent_temporaries_of_one_destination_differ(tmp_path):
    dst = tmp_path / "sumstats.parquet"
    with atomic_path(dst) as first, atomic_path(dst) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first")
        second.write_text("second")
    assert dst.read_text() == "first"  # the outer block exits last, its rename wins
    assert os.listdir(tmp_path) == ["sumstats.parquet"]


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    dst = tmp_path / "big.bin"
    payloads = [bytes([k]) * 200_000 for k in range(8)]
    threads = [threading.Thread(target=write_bytes_atomic, args=(dst, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dst.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["big.bin"]


@pytest.mark.parametrize("suffix", [".png", ".npy", ".parquet"])
def test_the_extension_is_kept_at_the_end(tmp_path, suffix):
    with atomic_path(tmp_path / f"out{suffix}", suffix=suffix) as tmp:
        assert tmp.name.endswith(".tmp" + suffix)
        tmp.write_bytes(b"x")


def test_np_save_to_the_temporary_writes_no_extra_extension(tmp_path):
    dst = tmp_path / "z.npy"
    with atomic_path(dst, suffix=".npy") as tmp:
        np.save(tmp, np.arange(3))  # would append .npy to a name not ending in it
    np.testing.assert_array_equal(np.load(dst), np.arange(3))
    assert os.listdir(tmp_path) == ["z.npy"]


def test_the_file_gets_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text_atomic(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"its folder .*nowhere does not exist; create it first"):
        with atomic_path(tmp_path / "nowhere" / "f.txt"):
            pass


def test_bytes_and_text_writers_round_trip(tmp_path):
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01", fsync=True).read_bytes() == b"\x00\x01"
    assert write_text_atomic(tmp_path / "t.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "t.txt"]


def test_tsv_writer_round_trips_and_quotes_when_needed(tmp_path):
    df = pd.DataFrame({"snp": ["rs1", "rs2"], "p": [1e-8, 0.5], "dim": [0, 3]})
    out = write_tsv_atomic(df, tmp_path / "minp.tsv")
    pd.testing.assert_frame_equal(pd.read_csv(out, sep="\t"), df)
    awkward = pd.DataFrame({"trait": ['has\ttab', 'has "quote"'], "n": [1, 2]})
    out = write_tsv_atomic(awkward, tmp_path / "awkward.tsv")  # Arrow refuses: pandas quotes
    pd.testing.assert_frame_equal(pd.read_csv(out, sep="\t"), awkward)
    assert sorted(os.listdir(tmp_path)) == ["awkward.tsv", "minp.tsv"]
