"""Study assembly: choose the study and map FLAIR/T1/T1ce/T2 from DICOM metadata (pure logic)."""
