"""DICOM result objects (SEG and SR), built with highdicom."""
