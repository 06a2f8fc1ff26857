"""BraTS-2021-layout cases → prepared training arrays, through the service's own preprocessing.

Layout: ``<root>/<case_id>/<case_id>_{flair,t1,t1ce,t2,seg}.nii.gz`` (``.nii`` also accepted), the
BraTS 2021 release (and ``tumorseg phantom``) convention; any folder below ``root`` whose files follow
that pattern is a case. A folder with some of the five files but not all is an ``IncompleteCase``.

``prepare_case`` reads the volumes with SimpleITK (LPS geometry) and calls
``tumorseg.imaging.preprocess.prepare`` with the seg as ``labels`` — exactly what serving does with the
DICOM volumes — so the arrays are on the cropped model grid:

- ``PreparedCase.image``: float16 (C, I, J, K), channels in ``Preprocessing.channels`` order, axes the
  index axes (i, j, k) of the model grid (identity direction in LPS: L, P, S), ``spacing_mm`` isotropic,
  z-scored over non-zero voxels per channel. Stored as float16 to halve the memory of a cached training
  set (the z-scored values need far less than float16's precision); ``float32()`` gives the model dtype.
- ``PreparedCase.labels``: uint8 (I, J, K), BraTS labels {0, 1 NCR, 2 ED, 4 ET} on the same grid.

Preparation costs seconds per case and is the same every epoch, so ``load_prepared`` does it once and keeps
the result in memory, and optionally in ``<cache_dir>/<case_id>.npz`` keyed by the preprocessing and the
source files' sizes and modification times (a changed case or recipe is prepared again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from tumorseg.imaging.preprocess import Preprocessing, prepare
from tumorseg.sequences import SEQUENCES
from tumorseg.threads import usable_cpus

log = logging.getLogger(__name__)

PREPARE_WORKERS = 4  # cases prepared at once by load_prepared

SEG = "seg"
PARTS = (*SEQUENCES, SEG)
_SUFFIXES = (".nii.gz", ".nii")
_FILE = re.compile(r"^(?P<case>.+)_(?P<part>flair|t1|t1ce|t2|seg)\.nii(\.gz)?$")


class IncompleteCase(ValueError):
    """A case folder lacks some of the four modalities or the segmentation."""


@dataclass(frozen=True)
class CaseFiles:
    """The five NIfTI files of one case (``paths`` keyed by flair, t1, t1ce, t2, seg)."""

    case_id: str
    folder: Path
    paths: dict[str, Path]

    def volume(self, part: str) -> sitk.Image:
        """One file as a SimpleITK image (LPS geometry, the file's own lattice)."""
        return sitk.ReadImage(str(self.paths[part]))

    def volumes(self) -> dict[str, sitk.Image]:
        return {m: self.volume(m) for m in SEQUENCES}


def _case_files(folder: Path, require_seg: bool) -> CaseFiles | None:
    """The case in ``folder``, ``None`` if no file there follows the layout, ``IncompleteCase`` if only
    some do."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _FILE.match(path.name)
        if match and path.is_file():
            parts = found.setdefault(match["case"], {})
            # .nii.gz wins over .nii when both exist (sorted order puts .nii first).
            if match["part"] not in parts or path.name.endswith(".gz"):
                parts[match["part"]] = path
    if not found:
        return None
    if len(found) > 1:
        raise IncompleteCase(f"{folder} holds files of several cases: {sorted(found)}")
    case_id, paths = next(iter(found.items()))
    needed = PARTS if require_seg else SEQUENCES
    missing = [p for p in needed if p not in paths]
    if missing:
        expected = ", ".join(f"{case_id}_{p}.nii.gz" for p in missing)
        raise IncompleteCase(f"case {case_id} in {folder} is incomplete: missing {expected} (or .nii)")
    return CaseFiles(case_id=case_id, folder=folder, paths=paths)


def find_cases(root: Path, require_seg: bool = True) -> list[CaseFiles]:
    """Every case folder under ``root`` (``root`` itself may be one case), sorted by case id."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no data folder {root}")
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    cases = [c for f in folders if (c := _case_files(f, require_seg)) is not None]
    if not cases:
        raise FileNotFoundError(
            f"no BraTS-layout cases under {root}: expected <case>/<case>_{{flair,t1,t1ce,t2,seg}}.nii.gz"
        )
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"case ids found more than once under {root}: {duplicates}")
    return sorted(cases, key=lambda c: c.case_id)


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """One case on the cropped model grid; see the module docstring for the array contract."""

    case_id: str
    image: NDArray[np.float16]  # (C, I, J, K)
    labels: NDArray[np.uint8]  # (I, J, K), BraTS labels

    def float32(self) -> NDArray[np.float32]:
        return self.image.astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes + self.labels.nbytes)


def prepare_case(case: CaseFiles, prep: Preprocessing, reference: str = "flair") -> PreparedCase:
    """Read a case and put it on the model grid with ``tumorseg.imaging.preprocess.prepare``."""
    model_input, labels = prepare(case.volumes(), reference, prep, labels=case.volume(SEG))
    assert labels is not None  # prepare returns labels when it is given some
    return PreparedCase(case.case_id, model_input.array.astype(np.float16), labels)


def cache_key(case: CaseFiles, prep: Preprocessing, reference: str) -> str:
    """Changes when the recipe, the reference or any source file (size, mtime) changes."""
    stats = {p: [path.name, path.stat().st_size, path.stat().st_mtime_ns] for p, path in case.paths.items()}
    text = json.dumps({"prep": prep.to_json(), "reference": reference, "files": stats}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cached(path: Path, key: str, case_id: str) -> PreparedCase | None:
    try:
        with np.load(path) as data:
            if str(data["key"]) != key:
                return None
            return PreparedCase(case_id, data["image"], data["labels"])
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None


def load_prepared(
    cases: Sequence[CaseFiles],
    prep: Preprocessing,
    reference: str = "flair",
    cache_dir: Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[PreparedCase]:
    """``prepare_case`` for every case, reusing ``cache_dir/<case_id>.npz`` where it is still valid.

    Up to ``PREPARE_WORKERS`` cases are read and prepared side by side (decompression, resampling and file
    writes release the GIL; ``prepare`` itself already spreads each case over the CPUs, and every case in
    flight holds its full-size volumes); the result keeps the order of ``cases``. ``progress(done, total,
    case_id)`` is called after each case, in that order."""
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    def load(case: CaseFiles) -> PreparedCase:
        if cache_dir is None:
            return prepare_case(case, prep, reference)
        key = cache_key(case, prep, reference)
        path = cache_dir / f"{case.case_id}.npz"
        item = _read_cached(path, key, case.case_id) if path.is_file() else None
        if item is None:
            item = prepare_case(case, prep, reference)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, key=np.array(key), image=item.image, labels=item.labels)
            tmp.replace(path)
        return item

    prepared = []
    with ThreadPoolExecutor(max_workers=max(1, min(usable_cpus(), PREPARE_WORKERS, len(cases)))) as pool:
        for n, (case, item) in enumerate(zip(cases, pool.map(load, cases), strict=True), start=1):
            prepared.append(item)
            if progress is not None:
                progress(n, len(cases), case.case_id)
    total = sum(p.nbytes for p in prepared) / 2**20
    log.info("%d case(s) prepared, %.0f MiB in memory", len(prepared), total)
    return prepared


def split_cases(
    cases: Sequence[CaseFiles], val_fraction: float, seed: int
) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """(train, validation): a seeded random ``val_fraction`` of the cases (at least one when the fraction
    is positive and there are two or more cases) is held out for validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(cases) * val_fraction)
    if val_fraction > 0 and len(cases) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(cases) - 1)
    order = np.random.default_rng(seed).permutation(len(cases))
    val_ids = {int(i) for i in order[:n_val]}
    train = [c for i, c in enumerate(cases) if i not in val_ids]
    val = [c for i, c in enumerate(cases) if i in val_ids]
    return train, val
