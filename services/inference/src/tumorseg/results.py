"""The persisted result store: ``<results_dir>/<result_id>/`` with ``result.json`` and the files it names.

Result ids are random UUIDs (32 lowercase hex digits) and are validated before any path is built, so a
caller cannot reach outside the store. A result is written into a hidden temporary folder and renamed
into place in one step, so a crash never leaves half a result behind; results survive restarts.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from tumorseg.errors import ResultNotFound
from tumorseg.schema import SegmentResult

_RESULT_ID = re.compile(r"^[0-9a-f]{32}$")
RESULT_JSON = "result.json"
FILES = {"mask.nii.gz": "application/gzip", "preview.png": "image/png"}


def new_result_id() -> str:
    return uuid.uuid4().hex


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _folder(self, result_id: str) -> Path:
        if not _RESULT_ID.match(result_id):
            raise ResultNotFound(f"no result {result_id!r} (a result id is 32 hexadecimal digits)")
        return self.root / result_id

    def staging(self, result_id: str) -> Path:
        """A fresh private folder in which a result's files are written before ``commit``."""
        folder = self.root / f".tmp-{self._folder(result_id).name}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, result: SegmentResult) -> None:
        """Write ``result.json`` into ``staging`` and move the folder into place as ``result.result_id``,
        atomically."""
        folder = self._folder(result.result_id)
        (staging / RESULT_JSON).write_text(result.model_dump_json(indent=2) + "\n")
        os.replace(staging, folder)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def read(self, result_id: str) -> SegmentResult:
        path = self._folder(result_id) / RESULT_JSON
        if not path.is_file():
            raise ResultNotFound(f"no result {result_id}")
        return SegmentResult.model_validate_json(path.read_bytes())

    def file(self, result_id: str, name: str) -> Path:
        if name not in FILES:
            raise ResultNotFound(f"results have no file {name!r}")
        path = self._folder(result_id) / name
        if not path.is_file():
            raise ResultNotFound(f"result {result_id} has no {name}")
        return path
