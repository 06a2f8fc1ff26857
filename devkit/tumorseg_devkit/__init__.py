"""Development tools of tumorseg (the service never imports this package; its image lacks it).

- ``synth``: BraTS-like phantoms, clinical-head phantoms, follow-up visits and BraTS case → DICOM
  conversion (``tumorseg phantom``, ``phantom-followup``, ``to-dicom``: ``tumorseg_devkit.cli``).
- ``local``: a local Orthanc, Redis and Prometheus on free ports, for tests, ``make demo`` and ``make bench``.
- ``launcher``: ``tumorseg serve`` / ``tumorseg worker`` as real local processes.
- ``paths``: where the checkout's own files are (the devkit runs from a checkout).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
