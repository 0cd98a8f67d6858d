"""Qt-free logic of the MedDINOv3 Slicer module: MRML <-> MedDINOv3Core, background jobs, overlays.

Modules: ``geometry`` (the one RAS <-> LPS conversion), ``segmentation`` (labelmap <-> segmentation node),
``jobs`` (``python -m training`` in a background process with progress and Cancel), ``overlays`` (reused
similarity / PCA nodes) and ``logic`` (``MedDINOv3Logic``: what the Widget calls). Nothing here imports Qt or torch,
so it runs (and is tested) against slicer-core's MRML scene outside the Slicer application.
"""
