"""BraTS-2021-like phantoms: synthetic multi-modal brain-tumour cases for the demo, tests and training.

Contract
- ``generate_case(seed)`` -> ``PhantomCase``: FLAIR, T1, T1ce, T2 (int16, >= 1 inside the brain, 0
  outside: skull-stripped) and the segmentation (uint8, BraTS 2021 labels 0 / 1 NCR / 2 ED / 4 ET), all
  of shape (240, 240, 155) = the NIfTI voxel axes (i, j, k), 1 mm isotropic, co-registered. ``affine``
  (4 x 4, nibabel convention: voxel -> RAS+ mm) is that of the BraTS 2021 release files, diag(-1, -1, 1)
  with translation (0, 239, 0): i runs right -> left, j anterior -> posterior, k inferior -> superior
  ("LPS" voxel order).
- ``write_case`` writes ``<out>/<case_id>/<case_id>_{flair,t1,t1ce,t2,seg}.nii.gz`` with that affine as
  both sform and qform (codes 1), units mm; ``write_cases`` writes cases ``BraTS2021_{index:05d}``.
- Deterministic: a seed gives the same arrays on every run; case ``index`` of ``write_cases(seed=S)`` is
  ``generate_case(case_seed(S, index))``, whatever ``start_index`` and ``cases`` were.

How a case is made: MNI152 tissue templates (nilearn, offline) randomly posed and warped into the box
(``phantom_anatomy``); one to three tumours grown there with mass effect (``phantom_tumour``); images
synthesised from tissue fractions with per-case contrasts, bias, texture and noise (``phantom_contrast``).

Variety is part of the contract, because models trained here are judged on other generators' phantoms.
It is guaranteed over consecutive seeds rather than left to luck: the whole-tumour volume (5-150 mL,
log-uniform) follows a golden-ratio sequence in the seed, so any 8 consecutive seeds span small and
large tumours, and the profile cycles every 5 seeds through full (NCR + ET + ED), no_et (non-enhancing
core) and no_ncr (solid enhancing core); one seed in six is multifocal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom_anatomy import (
    BRATS_AFFINE,
    SHAPE,
    SITES,
    Anatomy,
    Pose,
    deform,
    load_templates,
    sample_pose,
    ventricle_resize,
)
from tumorseg_devkit.synth.phantom_contrast import synthesize
from tumorseg_devkit.synth.phantom_tumour import LesionPlan, Tumour, grow_tumour, mass_effects, place_lesions

__all__ = [
    "BRATS_AFFINE",
    "PROFILES",
    "SHAPE",
    "CasePlan",
    "LesionPlan",
    "PhantomCase",
    "build_case",
    "case_id",
    "case_seed",
    "generate_case",
    "plan_case",
    "write_case",
    "write_cases",
]

log = logging.getLogger(__name__)

PROFILES: tuple[str, ...] = ("full", "no_et", "full", "no_ncr", "full")
MAX_CASES = 100_000  # case ids carry five digits
_GOLDEN = 0.6180339887498949
_WT_ML = (5.0, 150.0)
_SITE_WEIGHTS = (0.4, 0.3, 0.3)  # deep, periventricular, cortical


@dataclass(frozen=True)
class CasePlan:
    """What a seed asks for, before any voxel is made (cheap: see ``plan_case``)."""

    seed: int
    profile: str  # one of PROFILES
    lesions: tuple[LesionPlan, ...]

    @property
    def wt_ml(self) -> float:
        return sum(les.wt_ml for les in self.lesions)


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One synthetic case on the BraTS 2021 lattice.

    Arrays have shape (240, 240, 155), axes = NIfTI voxel axes (i, j, k), 1 mm isotropic spacing;
    ``affine`` maps (i, j, k) to RAS+ mm (nibabel convention): diag(-1, -1, 1), translation (0, 239, 0),
    i.e. i -> patient left, j -> posterior, k -> superior. ``flair``/``t1``/``t1ce``/``t2`` are int16,
    >= 1 inside the brain and 0 outside; ``seg`` is uint8 with labels {0, 1 NCR, 2 ED, 4 ET};
    ``tissue`` (uint8) is the dominant normal tissue under everything: 0 outside the brain, 1 CSF, 2 GM,
    3 WM (useful to check contrasts, not part of the BraTS layout).
    """

    flair: NDArray[np.int16]
    t1: NDArray[np.int16]
    t1ce: NDArray[np.int16]
    t2: NDArray[np.int16]
    seg: NDArray[np.uint8]
    affine: NDArray[np.float64]
    tissue: NDArray[np.uint8]
    plan: CasePlan

    def image(self, modality: str) -> NDArray[np.int16]:
        """The volume of ``modality`` (one of ``SEQUENCES``)."""
        if modality not in SEQUENCES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(SEQUENCES)}")
        arr: NDArray[np.int16] = getattr(self, modality)
        return arr


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for plan, anatomy, tumour and contrast: changing one stage's draws does not
    shift the others'."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a run with ``seed``: distinct for every (seed, index < 100000), and
    consecutive indices get consecutive seeds, so a run inherits the per-seed variety guarantees."""
    if not 0 <= index < MAX_CASES:
        raise ValueError(f"case index must be in [0, {MAX_CASES}), got {index}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed * MAX_CASES + index


def case_id(index: int) -> str:
    """BraTS-style case id: ``BraTS2021_00042``."""
    if not 0 <= index < MAX_CASES:
        raise ValueError(f"case index must be in [0, {MAX_CASES}), got {index}")
    return f"BraTS2021_{index:05d}"


def plan_case(seed: int) -> CasePlan:
    """The profile and lesions that ``generate_case(seed)`` builds (volumes, sites, compartments)."""
    rng = _streams(seed)[0]
    profile = PROFILES[seed % len(PROFILES)]
    # Golden-ratio (Weyl) sequence: consecutive seeds spread evenly over the log-volume range.
    u = (seed * _GOLDEN + rng.uniform(-0.03, 0.03)) % 1.0
    wt_ml = _WT_ML[0] * (_WT_ML[1] / _WT_ML[0]) ** u
    n_lesions = int(rng.choice([2, 3], p=[0.7, 0.3])) if seed % 6 == 4 else 1
    shares = np.array([1.0])
    if n_lesions > 1:
        primary = rng.uniform(0.55, 0.85)
        shares = np.concatenate([[primary], (1 - primary) * rng.dirichlet(np.ones(n_lesions - 1))])
    lesions = []
    for share in shares:
        ncr = 0.0 if profile == "no_ncr" else float(rng.uniform(0.15, 0.65))
        lesions.append(
            LesionPlan(
                site=str(rng.choice(SITES, p=_SITE_WEIGHTS)),
                wt_ml=max(0.8, float(wt_ml * share)),
                # Solid enhancing cores are seldom large: keep them below half the whole tumour.
                tc_fraction=float(rng.uniform(0.1, 0.5 if profile == "no_ncr" else 0.8)),
                ncr_fraction=ncr if profile != "no_et" else 1.0,
                enhancing=profile != "no_et",
            )
        )
    return CasePlan(seed=seed, profile=profile, lesions=tuple(lesions))


def brain_and_tumour(
    plan: CasePlan, rng_anatomy: np.random.Generator, rng_tumour: np.random.Generator
) -> tuple[Pose, Anatomy, Tumour]:
    """The case's deformed anatomy and grown tumour, drawn from the anatomy and tumour streams in a fixed
    order (``generate_case`` and the head phantoms share it, so a seed gives the same brain in both)."""
    templates = load_templates()
    pose = sample_pose(rng_anatomy, templates)
    centres = place_lesions(plan.lesions, templates, pose, rng_tumour)
    masses = [
        ventricle_resize(templates, pose, rng_anatomy),
        *mass_effects(plan.lesions, centres, rng_tumour),
    ]
    anatomy = deform(templates, pose, masses, rng_anatomy)
    return pose, anatomy, grow_tumour(plan.lesions, centres, anatomy, rng_tumour)


def generate_case(seed: int) -> PhantomCase:
    """Make the case of ``seed`` (>= 0) in memory; see ``PhantomCase`` for the array contract.

    The first call in a process also loads the MNI152 templates (a few seconds); later calls take
    a few seconds each on one core.
    """
    start = time.perf_counter()
    plan = plan_case(seed)
    case = build_case(plan)
    log.info(
        "phantom seed %d: %s, %d lesion(s), WT %.1f mL planned, %.1f mL made, %.1f s",
        seed,
        plan.profile,
        len(plan.lesions),
        plan.wt_ml,
        np.count_nonzero(case.seg) / 1000,
        time.perf_counter() - start,
    )
    return case


def build_case(plan: CasePlan, affine: NDArray[np.float64] = BRATS_AFFINE) -> PhantomCase:
    """The case ``plan`` asks for, drawn from the streams of ``plan.seed`` (``generate_case``'s, or a
    follow-up's with its lesions rescaled), with ``affine`` (a copy) as its voxel -> RAS+ mm map."""
    _, rng_anatomy, rng_tumour, rng_contrast = _streams(plan.seed)
    _, anatomy, tumour = brain_and_tumour(plan, rng_anatomy, rng_tumour)
    images = synthesize(anatomy, tumour, plan.profile != "no_et", rng_contrast)
    tissue = np.zeros(SHAPE, dtype=np.uint8)
    where = anatomy.voxels
    tissue[where] = 1 + np.argmax(
        np.stack([anatomy.csf[where], anatomy.gm[where], anatomy.wm[where]]), axis=0
    )
    return PhantomCase(
        flair=images["flair"],
        t1=images["t1"],
        t1ce=images["t1ce"],
        t2=images["t2"],
        seg=tumour.seg,
        affine=affine.copy(),
        tissue=tissue,
        plan=plan,
    )


def write_case(case: PhantomCase, out_dir: Path, case_id: str) -> Path:
    """Write ``case`` as ``out_dir/case_id/case_id_{flair,t1,t1ce,t2,seg}.nii.gz``; return the case folder.

    NIfTI-1, gzip, arrays stored as given (int16 images, uint8 seg), ``case.affine`` as sform and qform
    with codes 1 (scanner), spatial unit mm. Existing files of the same names are replaced.
    """
    import nibabel as nib

    if not case_id or Path(case_id).name != case_id:
        raise ValueError(f"case_id must be a plain folder name, got {case_id!r}")
    folder = Path(out_dir) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    volumes: list[tuple[str, NDArray[np.generic]]] = [(m, case.image(m)) for m in SEQUENCES]
    volumes.append(("seg", case.seg))
    for name, data in volumes:
        img = nib.Nifti1Image(data, case.affine)
        img.header.set_qform(case.affine, code=1)
        img.header.set_sform(case.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        img.header["descrip"] = f"tumorseg phantom seed {case.plan.seed}".encode()[:79]
        nib.save(img, folder / f"{case_id}_{name}.nii.gz")
    return folder


def write_cases(
    out: Path,
    cases: int = 1,
    seed: int = 0,
    start_index: int = 0,
    progress: Callable[[int, Path], None] | None = None,
    write: Callable[[int, Path, str], Path] | None = None,
) -> list[Path]:
    """Generate and write cases ``start_index`` .. ``start_index + cases - 1`` of run ``seed`` under ``out``.

    Case ``k`` is ``generate_case(case_seed(seed, k))`` written as ``case_id(k)`` (or whatever
    ``write(case_seed(seed, k), out, case_id(k))`` writes, returning its folder); ``progress(k, folder)`` is
    called after each. Returns the case folders in order.
    """
    if cases < 0:
        raise ValueError(f"cases must be >= 0, got {cases}")
    if start_index < 0 or start_index + cases > MAX_CASES:
        raise ValueError(f"case indices must stay in [0, {MAX_CASES}): start {start_index}, {cases} cases")
    folders = []
    for index in range(start_index, start_index + cases):
        if write is None:
            folder = write_case(generate_case(case_seed(seed, index)), Path(out), case_id(index))
        else:
            folder = write(case_seed(seed, index), Path(out), case_id(index))
        folders.append(folder)
        if progress is not None:
            progress(index, folder)
    return folders
