"""Qt-free logic of the MedDINOv3 Slicer module: the module's state machine, MRML <-> MedDINOv3Core, background jobs.

Modules: ``controller`` (``ModuleController``: enabled actions, the running job, progress, status, failures, scene
close, module exit), ``logic`` (``MedDINOv3Logic``: segment / features / fine-tune jobs, clicks, PCA, export),
``views`` (what the slice and 3D views show), ``overlays`` (the reused similarity / PCA nodes), ``jobs``
(``python -m training`` in a background process with progress and Cancel), ``dependencies`` (packages per action,
checked by version), ``geometry`` (the one RAS <-> LPS conversion), ``segmentation`` (labelmap <-> segmentation
node), ``dicom_identity`` and ``rtexport`` (RT Structure Sets that keep the source's patient and study),
``sampledata`` (the "MedDINOv3 phantom" sample) and ``selftest`` (the module's self-test body). Nothing here imports
Qt or torch, so it runs (and is tested) against slicer-core's MRML scene outside the Slicer application.
"""
