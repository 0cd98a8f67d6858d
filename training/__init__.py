"""`python -m training ...`: the headless command line of MedDINOv3 (thin: parse, build config, call the library)."""
