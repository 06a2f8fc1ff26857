"""What leaves the pipeline as files: the NIfTI mask, the preview image and the DICOM SEG dataset."""
