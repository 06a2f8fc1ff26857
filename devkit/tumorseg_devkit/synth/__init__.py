"""Synthetic data: BraTS-like phantoms and BraTS case → DICOM conversion (demo, tests, training)."""
