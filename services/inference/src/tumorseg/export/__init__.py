"""What leaves the pipeline: the NIfTI mask, volumes, (later) the DICOM SEG and the preview image."""
