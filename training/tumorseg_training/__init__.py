"""Training and evaluation of tumorseg model packages (the service never imports this package).

Stages, one module each:

- ``data``: BraTS-2021-layout folders → ``CaseFiles`` → ``PreparedCase`` through the service's own
  ``tumorseg.imaging.preprocess.prepare`` (train/serve parity), cached once per case (memory + ``.npz``).
- ``transforms``: MONAI dictionary transforms — tumour-biased random crops, flips, intensity scale/shift,
  optional modality dropout, BraTS labels → TC/WT/ET region channels.
- ``metrics``: per-region Dice and HD95 with the BraTS conventions for empty regions.
- ``train``: ``TrainConfig`` and ``train`` (AdamW + cosine, DiceCE, AMP on CUDA, sliding-window
  validation, best-checkpoint package, resume), writing a ``tumorseg.model.package`` directory.
- ``evaluate``: a package on BraTS-layout cases, scored on each case's original lattice.
- ``curves`` and ``card``: ``curves.png`` (Pillow) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
