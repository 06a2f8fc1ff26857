"""``ResultStore`` bounds its growth: crashed staging folders, retention by age and size, durable commits."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from tests.results import result
from tumorseg.errors import ResultNotFound
from tumorseg.results import STALE_TMP_S, ResultStore, new_result_id

DAY = 86400.0


def commit(store: ResultStore, mask: bytes = b"mask", days_ago: float = 0.0) -> str:
    """Commit a result with a mask of the given bytes, its folder dated ``days_ago``."""
    rid = new_result_id()
    staging = store.staging(rid)
    (staging / "mask.nii.gz").write_bytes(mask)
    store.commit(staging, result(rid))
    age(store.root / rid, days_ago * DAY)
    return rid


def age(path: Path, seconds: float) -> None:
    """Date ``path`` and everything in it ``seconds`` ago."""
    when = time.time() - seconds
    for child in path.rglob("*"):
        os.utime(child, (when, when))
    os.utime(path, (when, when))


def present(store: ResultStore, rid: str) -> bool:
    try:
        store.read(rid)
    except ResultNotFound:
        return False
    return True


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- leftovers of a crash ----------------------------------------------------------------------------


def test_stale_staging_folders_are_removed_at_start_and_fresh_ones_kept(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    stale, fresh = store.staging(new_result_id()), store.staging(new_result_id())
    (stale / "mask.nii.gz").write_bytes(b"half")
    (fresh / "mask.nii.gz").write_bytes(b"being written by another process")
    age(stale, STALE_TMP_S + 60)
    age(fresh, STALE_TMP_S - 600)  # older than a minute, younger than the grace period
    kept = commit(store)
    ResultStore(tmp_path)  # a restart
    assert not stale.exists()
    assert (fresh / "mask.nii.gz").read_bytes() == b"being written by another process"
    assert present(store, kept)


def test_a_staging_folder_written_to_recently_is_kept_even_if_the_folder_is_old(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    staging = store.staging(new_result_id())
    (staging / "mask.nii.gz").write_bytes(b"m")
    age(staging, STALE_TMP_S * 2)
    (staging / "preview.png").write_bytes(b"p")  # the writer is still alive
    os.utime(staging, (time.time() - STALE_TMP_S * 2,) * 2)
    ResultStore(tmp_path)
    assert staging.exists()


def test_an_interrupted_deletion_is_finished_at_start(tmp_path: Path) -> None:
    leftover = tmp_path / f".del-{new_result_id()}-0123abcd"
    leftover.mkdir()
    (leftover / "mask.nii.gz").write_bytes(b"m")
    ResultStore(tmp_path)
    assert not leftover.exists()


def test_what_is_not_a_result_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not a result")
    (tmp_path / "notes").mkdir()
    age(tmp_path / "notes", 100 * DAY)
    ResultStore(tmp_path, max_age_days=1, max_bytes=1)
    assert (tmp_path / "README").exists()
    assert (tmp_path / "notes").exists()


# --- durability --------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced descriptors")
def test_commit_fsyncs_every_file_and_both_folders_around_an_atomic_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ResultStore(tmp_path)
    rid = new_result_id()
    staging = store.staging(rid)
    (staging / "mask.nii.gz").write_bytes(b"mask")
    (staging / "preview.png").write_bytes(b"png")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.commit(staging, result(rid))

    rename = events.index(("replace", str(staging)))
    before = {path for kind, path in events[:rename] if kind == "fsync"}
    after = {path for kind, path in events[rename + 1 :] if kind == "fsync"}
    root = str(tmp_path.resolve())
    staged = str(staging.resolve())
    assert before == {f"{staged}/result.json", f"{staged}/mask.nii.gz", f"{staged}/preview.png", staged}
    assert root in after
    assert store.read(rid) == result(rid)
    assert store.file(rid, "mask.nii.gz").read_bytes() == b"mask"
    assert store.file(rid, "preview.png").read_bytes() == b"png"


def test_a_failed_fsync_leaves_no_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path)
    rid = new_result_id()
    staging = store.staging(rid)
    (staging / "mask.nii.gz").write_bytes(b"mask")

    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output"):
        store.commit(staging, result(rid))
    assert not present(store, rid)


# --- retention ---------------------------------------------------------------------------------------


def test_results_older_than_max_age_are_deleted_at_start(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    old, older, young = commit(store, days_ago=8), commit(store, days_ago=30), commit(store, days_ago=6)
    store = ResultStore(tmp_path, max_age_days=7)
    assert not present(store, old)
    assert not present(store, older)
    assert present(store, young)
    with pytest.raises(ResultNotFound):
        store.file(old, "mask.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [young]  # nothing hidden left behind


def test_results_older_than_max_age_are_deleted_after_a_commit(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, max_age_days=0.5)
    old = commit(store, days_ago=0)
    age(tmp_path / old, DAY)  # it aged while the service ran
    new = commit(store)
    assert not present(store, old)
    assert present(store, new)


def test_the_oldest_results_go_while_the_store_is_too_big(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rids = [commit(store, mask=b"x" * 10_000, days_ago=days) for days in (4, 3, 2, 1)]
    sizes = [folder_bytes(tmp_path / rid) for rid in rids]
    store = ResultStore(tmp_path, max_bytes=sum(sizes[2:]) + 100)  # room for the two newest
    assert [present(store, rid) for rid in rids] == [False, False, True, True]
    newest = commit(store, mask=b"x" * 10_000)  # one more: the oldest left goes
    assert [present(store, rid) for rid in [*rids[2:], newest]] == [False, True, True]


def test_the_result_just_committed_is_kept_even_when_alone_too_big(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, max_bytes=1_000)
    small = commit(store, mask=b"x", days_ago=1)
    big = commit(store, mask=b"x" * 50_000)
    assert present(store, big)
    assert not present(store, small)
    assert store.file(big, "mask.nii.gz").stat().st_size == 50_000


def test_age_and_size_bounds_together(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    expired = commit(store, mask=b"x" * 10, days_ago=40)
    big_old = commit(store, mask=b"x" * 20_000, days_ago=2)
    young = commit(store, mask=b"x" * 10, days_ago=1)
    store = ResultStore(tmp_path, max_age_days=30, max_bytes=10_000)
    assert [present(store, rid) for rid in (expired, big_old, young)] == [False, False, True]


def test_none_disables_both_bounds(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rids = [commit(store, mask=b"x" * 100_000, days_ago=days) for days in (3650, 400, 0)]
    store = ResultStore(tmp_path, max_age_days=None, max_bytes=None)
    assert store.enforce_retention() == 0
    commit(store, mask=b"x" * 100_000)
    assert all(present(store, rid) for rid in rids)


def test_removals_are_logged_by_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ResultStore(tmp_path)
    old = commit(store, days_ago=10)
    with caplog.at_level(logging.INFO, logger="tumorseg.results"):
        ResultStore(tmp_path, max_age_days=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "tumorseg.results"]
    assert any("deleted 1 expired result(s)" in m for m in messages)
    assert not any("P1" in m for m in messages)  # no patient data in the log
    assert not present(store, old)


def test_a_reader_of_a_deleted_result_gets_not_found_and_an_open_file_stays_readable(
    tmp_path: Path,
) -> None:
    store = ResultStore(tmp_path)
    rid = commit(store, mask=b"mask bytes", days_ago=10)
    with store.file(rid, "mask.nii.gz").open("rb") as reading:  # a download in progress
        ResultStore(tmp_path, max_age_days=1)
        assert reading.read() == b"mask bytes"
    with pytest.raises(ResultNotFound):
        store.read(rid)
    with pytest.raises(ResultNotFound):
        store.file(rid, "mask.nii.gz")
