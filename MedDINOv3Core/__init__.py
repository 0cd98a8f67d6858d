"""MedDINOv3Core: the MedDINOv3 / DINOv3 library behind the 3D Slicer extension and the `training` command line.

No Slicer, no argparse, no prints: the library logs through `logging` and raises clear errors.
"""

__version__ = "0.1.0"
