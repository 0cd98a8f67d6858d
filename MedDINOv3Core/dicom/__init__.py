"""DICOM: CT series in/out and RT Structure Sets."""
