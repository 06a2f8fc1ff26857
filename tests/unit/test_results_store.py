from __future__ import annotations

from pathlib import Path

import pytest

from tests.results import result
from tumorseg.errors import ResultNotFound
from tumorseg.results import ResultStore, new_result_id
from tumorseg.schema import SegmentResult


def test_commit_then_read_and_survive_a_new_store(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rid = new_result_id()
    staging = store.staging(rid)
    (staging / "mask.nii.gz").write_bytes(b"mask")
    store.commit(staging, result(rid))
    again = ResultStore(tmp_path)  # a restart
    assert again.read(rid) == result(rid)
    assert again.file(rid, "mask.nii.gz").read_bytes() == b"mask"
    assert not staging.exists()


def test_a_crash_before_commit_leaves_no_result(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rid = new_result_id()
    staging = store.staging(rid)
    (staging / "mask.nii.gz").write_bytes(b"half")
    # the process dies here: the staging folder stays, but it is not a result
    with pytest.raises(ResultNotFound):
        store.read(rid)
    with pytest.raises(ResultNotFound):
        store.file(rid, "mask.nii.gz")
    store.discard(staging)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rid", ["../etc", "..", "a" * 31, "A" * 32, "0" * 32 + "/x", "", "%2e%2e"])
def test_ids_that_could_escape_the_store_are_refused(tmp_path: Path, rid: str) -> None:
    store = ResultStore(tmp_path / "results")
    with pytest.raises(ResultNotFound):
        store.read(rid)
    with pytest.raises(ResultNotFound):
        store.file(rid, "mask.nii.gz")


def test_only_known_files_are_served(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rid = new_result_id()
    staging = store.staging(rid)
    store.commit(staging, result(rid))
    with pytest.raises(ResultNotFound):
        store.file(rid, "result.json")  # served as JSON by its own route, not as a file
    with pytest.raises(ResultNotFound):
        store.file(rid, "preview.png")  # not written


def test_a_result_with_a_key_the_schema_lacks_is_refused() -> None:
    """The schema declares every key, so the API's OpenAPI document cannot silently drop one."""
    data = result(new_result_id()).model_dump() | {"surprise": 1}
    with pytest.raises(ValueError, match="surprise"):
        SegmentResult.model_validate(data)


def test_update_replaces_the_json_of_a_committed_result(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rid = new_result_id()
    store.commit(store.staging(rid), result(rid))
    changed = result(rid).model_copy(update={"warnings": ["checked"]})
    store.update(changed)
    assert ResultStore(tmp_path).read(rid).warnings == ["checked"]
    assert [p.name for p in (tmp_path / rid).iterdir()] == ["result.json"]  # no partial file left
    with pytest.raises(ResultNotFound):
        store.update(result(new_result_id()))
