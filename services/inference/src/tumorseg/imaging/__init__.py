"""DICOM series → volumes with exact LPS geometry; model grid ⇄ reference lattice."""
