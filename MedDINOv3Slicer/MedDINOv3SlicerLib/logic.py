"""MedDINOv3Logic: what the Slicer Widget calls (Qt-free; every option an argument; raises, never shows dialogs).

Long work (segment, feature extraction, fine-tuning) runs as ``python -m training ...`` in a background ``Job``
(see ``jobs``): the logic writes the volume with its exact geometry into a work folder, builds the command, and
the job's ``on_finish`` (run on the caller's thread by ``Job.result()``) brings the result back into the scene.
Clicks on the feature cache (similarity, PCA) are numpy in this process: no torch is ever imported here.

Typical Widget use::

    job = logic.segment_job(volume_node, "meddinov3-phantom-tiny")
    job.start()                     # then a QTimer: job.poll() -> progress bar; when not job.running:
    segmentation_node = job.result()  # JobError / JobCancelled -> show the message

and ``logic.segment(volume_node, model)`` does the same blocking (scripts, self-tests).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.progress import ProgressCallback
from MedDINOv3SlicerLib.geometry import node_geometry, ras_to_lps_point, volume_from_node
from MedDINOv3SlicerLib.jobs import Job, training_command
from MedDINOv3SlicerLib.overlays import PcaOverlay, SimilarityOverlay
from MedDINOv3SlicerLib.segmentation import labelmap_to_segmentation, segmentation_to_labelmap, unique_names

log = logging.getLogger(__name__)

LOCAL_MODELS_FILE = "local_models.json"
FINETUNE_RECIPES = {"fewshot": "finetune_fewshot", "decoder": "finetune_decoder", "full": "finetune"}
# One cache per volume serves clicks, PCA, few-shot training and few-shot prediction: the few-shot head aggregates
# the backbone's default blocks, so "Compute features" extracts those.
FEATURE_LAYERS = "multiscale"


def default_user_dir() -> Path:
    """``~/.cache/meddinov3/slicer``: the per-user folder for locally fine-tuned models and their registry."""
    return Path.home() / ".cache" / "meddinov3" / "slicer"


def default_features_root() -> Path | None:
    """None: feature caches go to the CLI's per-user cache (``~/.cache/meddinov3/features/<key digest>``)."""
    return None


def _node_grid(volume_node, world: bool = True) -> Volume:
    """A volume node's (z, y, x) shape and LPS geometry without its voxels (``world``: parent transform applied)."""
    image = volume_node.GetImageData()
    dims = image.GetDimensions() if image is not None else (0, 0, 0)
    return Volume.geometry_of(dims[::-1], *node_geometry(volume_node, world=world))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "model"


class MedDINOv3Logic:
    """The Slicer module's logic (see the module docstring).

    Args:
        scene: the MRML scene (default ``slicer.mrmlScene``).
        python: the interpreter that runs ``python -m training`` (default ``jobs.default_python()``: PythonSlicer
            inside the Slicer application, where the PyTorch extension installs torch; else ``sys.executable``).
        work_dir: folder for exported volumes and predictions (default: a new temporary folder, removed by
            ``cleanup()``).
        user_dir: folder of locally fine-tuned models and their registry ``local_models.json`` (default
            ``default_user_dir()``).
        features_root: where feature caches go, one folder per volume content (kept across sessions; explore
            rebuilds it when the model differs). None (``default_features_root()``): the CLI's per-user
            cache ``~/.cache/meddinov3/features``, one folder per key (weights, volume, preprocessing).
    """

    def __init__(
        self,
        scene=None,
        python: str | None = None,
        work_dir: str | os.PathLike | None = None,
        user_dir: str | os.PathLike | None = None,
        features_root: str | os.PathLike | None = None,
    ) -> None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene
        self.python = python
        self._own_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="meddinov3-")) if work_dir is None else Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.user_dir = Path(user_dir) if user_dir is not None else default_user_dir()
        self.similarity_overlay = SimilarityOverlay(scene)
        self.pca_overlay = PcaOverlay(scene)
        self.features_root = Path(features_root) if features_root is not None else default_features_root()
        self._caches: dict[str, tuple[Any, Volume]] = {}  # volume node id -> (FeatureCache, geometry)
        self.feature_models: dict[str, set[str]] = {}  # volume node id -> model references its cache serves
        self._pca_maps: dict[str, np.ndarray] = {}  # cache path -> RGB map

    def cleanup(self) -> None:
        """Remove the work folder when this logic created it."""
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _job_dir(self, kind: str) -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.mkdtemp(prefix=f"{kind}-{stamp}-", dir=self.work_dir))

    # ---------------------------------------------------------------------------------------------- models

    @property
    def local_models_path(self) -> Path:
        return self.user_dir / LOCAL_MODELS_FILE

    def _local_models(self) -> dict[str, dict[str, Any]]:
        path = self.local_models_path
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable local model list %s: %s", path, exc)
            return {}
        return {str(k): v for k, v in data.get("models", {}).items() if isinstance(v, dict)}

    def register_model(self, card_dir: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
        """Register a local model-card folder (e.g. a fine-tuning result) so ``list_models`` and segment see it.

        Args:
            card_dir: a folder with config.json + model.safetensors.
            name: the name to list it under (default: the card's name, else the folder name).

        Returns:
            the registered entry (name, task, description, license, path, source "local").

        Raises:
            FileNotFoundError: the folder lacks config.json or model.safetensors.
            ValueError: its config.json is not a valid model card (read by MedDINOv3Core.card, without torch).
        """
        from MedDINOv3Core.card import CONFIG_NAME, WEIGHTS_NAME, load_model_card  # torch-free

        card_dir = Path(card_dir).expanduser().resolve()
        if not (card_dir / CONFIG_NAME).is_file() or not (card_dir / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{card_dir} is not a model card (config.json + model.safetensors)")
        card = load_model_card(card_dir)
        name = name or str(card.name or card_dir.name)
        entry = {
            "name": name,
            "task": str(card.task),
            "description": str(card.description),
            "license": str(card.license),
            "path": str(card_dir),
            "source": "local",
        }
        models = self._local_models()
        models[name] = entry
        self.user_dir.mkdir(parents=True, exist_ok=True)
        from MedDINOv3Core.atomic import write_json

        write_json(self.local_models_path, {"models": models})
        log.info("registered local model %s -> %s", name, card_dir)
        return entry

    def list_models(self, task: str | None = None) -> list[dict[str, Any]]:
        """Registry models then locally registered ones: dicts with name, task, description, license, source.

        Args:
            task: only "segmentation" or "backbone" models (default all).
        """
        from MedDINOv3Core.registry import load_registry

        out = [
            {
                "name": e.name,
                "task": e.task,
                "description": e.description,
                "license": e.license,
                "source": "bundled" if e.bundled else "registry",
            }
            for e in load_registry().values()
        ]
        names = {m["name"] for m in out}
        for name, entry in sorted(self._local_models().items()):
            if name in names:
                log.warning("local model %s shadows a registry name; listed under the registry's", name)
                continue
            if not Path(entry.get("path", "")).is_dir():
                log.warning("local model %s: folder %s is gone; skipped", name, entry.get("path"))
                continue
            out.append(dict(entry))
        return [m for m in out if task is None or m["task"] == task]

    def model_reference(self, model: str) -> str:
        """What ``--model`` gets for ``model``: a local model's folder, else the name / path unchanged."""
        entry = self._local_models().get(model)
        return entry["path"] if entry and Path(entry.get("path", "")).is_dir() else str(model)

    # --------------------------------------------------------------------------------------------- export

    def _export_volume(self, volume_node, folder: Path, name: str = "volume.nrrd") -> tuple[Path, Volume]:
        """Write the node's voxels with exact geometry (NRRD keeps it bit for bit); returns (path, Volume)."""
        from MedDINOv3Core.volume_io import write_volume

        volume = volume_from_node(volume_node)
        path = write_volume(volume, folder / name)
        return path, volume

    def _place_with(self, node, volume_node) -> None:
        """Put ``node`` under the volume's study in the subject hierarchy (else the volume's parent folder)."""
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if sh is None:
            return
        scene_item = sh.GetSceneItemID()
        volume_item = sh.GetItemByDataNode(volume_node) or sh.CreateItem(scene_item, volume_node)
        item = sh.GetItemByDataNode(node) or sh.CreateItem(scene_item, node)
        if not volume_item or not item:
            return
        parent = sh.GetItemParent(volume_item)
        target, ancestor = parent, parent
        while ancestor and ancestor != scene_item:
            if sh.GetItemLevel(ancestor) == "Study":
                target = ancestor
                break
            ancestor = sh.GetItemParent(ancestor)
        if target and target != scene_item:
            sh.SetItemParent(item, target)

    # -------------------------------------------------------------------------------------------- segment

    def segment_job(
        self,
        volume_node,
        model: str,
        device: str = "auto",
        output_name: str | None = None,
        segmentation_node=None,
        tta: bool = False,
        batch_size: int | None = None,
        features: str | os.PathLike | None = None,
    ) -> Job:
        """A (not yet started) job segmenting ``volume_node`` with ``model``; ``result()`` is the segmentation node.

        Args:
            volume_node: the scalar volume to segment (its exact geometry is kept).
            model: a registry name, a locally registered name, a model-card folder or ``org/name``.
            device: "auto", "cpu", "cuda", "cuda:N" or "mps".
            output_name: the segmentation node's name (default "<volume> segmentation").
            segmentation_node: reuse this node (its segments are replaced) instead of creating one.
            tta: mirroring test-time augmentation; batch_size: slices per forward pass (default the model's).
            features: the volume's feature cache (a few-shot model then runs its head alone, no backbone pass).
        """
        folder = self._job_dir("segment")
        source, volume = self._export_volume(volume_node, folder)
        output = folder / "segmentation.seg.nrrd"
        args = ["--model", self.model_reference(model), "--input", str(source), "--output", str(output)]
        args += ["--device", device]
        if tta:
            args.append("--tta")
        if batch_size is not None:
            args += ["--batch-size", str(int(batch_size))]
        if features is not None:
            args += ["--features", str(features)]
        name = output_name or f"{volume_node.GetName()} segmentation"
        geometry = volume.geometry_only()

        def on_finish(job: Job):
            from MedDINOv3Core.volume_io import read_segmentation

            labelmap, segments = read_segmentation(output)
            if labelmap.shape != geometry.shape or not labelmap.same_geometry(geometry, tol=1e-4):
                raise RuntimeError(f"the prediction {output} is not on the volume's grid; report this as a bug")
            labels = [
                {
                    "value": s["labelValue"],
                    "name": s.get("name"),
                    "color": s.get("color"),
                    "terminology": s.get("terminology"),
                }
                for s in segments
            ]
            # the labels are the volume's voxels: import them on the node's own grid, under the volume's transform
            local_grid = _node_grid(volume_node, world=False)
            if local_grid.shape != geometry.shape:
                raise RuntimeError(f"volume '{volume_node.GetName()}' changed size while it was being segmented")
            local = local_grid.with_array(labelmap.array)
            node = labelmap_to_segmentation(self.scene, local, labels, volume_node, name, segmentation_node)
            node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
            self._place_with(node, volume_node)
            from MedDINOv3SlicerLib.views import show_segmentation

            show_segmentation(self.scene, volume_node, node)  # over the volume in 2D (fill + outline) and in 3D
            return node

        return Job(training_command("predict", *args, python=self.python), cwd=folder, on_finish=on_finish)

    def segment(
        self,
        volume_node,
        model: str,
        device: str = "auto",
        progress: ProgressCallback | None = None,
        cancel: Any = None,
        **options: Any,
    ):
        """Segment and wait (blocking): ``segment_job(...)`` + start + wait + result; returns the segmentation node."""
        return self.segment_job(volume_node, model, device=device, **options).start().wait(progress, cancel)

    # -------------------------------------------------------------------------------------------- explore

    def explore_job(
        self,
        volume_node,
        model: str,
        device: str = "auto",
        layers: str | None = FEATURE_LAYERS,
        upsample: int = 1,
        cache_dir: str | os.PathLike | None = None,
    ) -> Job:
        """A job extracting the volume's patch features into a cache; ``result()`` is the opened FeatureCache.

        After it, ``show_similarity`` and ``show_pca`` work on this volume (numpy only), and few-shot training and
        prediction read it (``--features``). ``cache_dir`` defaults to ``features_root/<volume content digest>``
        (None: the CLI's per-user cache; the job's "done" line says where).
        """
        from MedDINOv3Core.feature_cache import volume_hash

        folder = self._job_dir("explore")
        source, volume = self._export_volume(volume_node, folder)
        target = Path(cache_dir) if cache_dir is not None else None
        if target is None and self.features_root is not None:
            digest = volume_hash(volume.array, volume.spacing, volume.origin, volume.direction)[:32]
            target = self.features_root / digest
        reference = self.model_reference(model)
        args = ["--model", reference, "--input", str(source), "--device", device, "--upsample", str(int(upsample))]
        if target is not None:
            args += ["--cache-dir", str(target)]
        if layers is not None:
            args += ["--layers", str(layers)]
        geometry = volume.geometry_only()

        def on_finish(job: Job):
            done = [e for e in job.events if e.stage == "done" and e.data.get("cache")]
            path = Path(done[-1].data["cache"]) if done else target
            if path is None:
                raise RuntimeError("the feature job did not say where it wrote the cache; report this as a bug")
            cache = self.attach_features(volume_node, path, geometry)
            self.feature_models[volume_node.GetID()] = {reference}
            return cache

        return Job(training_command("explore", *args, python=self.python), cwd=folder, on_finish=on_finish)

    def attach_features(self, volume_node, cache_dir: str | os.PathLike, geometry: Volume | None = None):
        """Use an existing feature cache (``explore --cache-dir``, e.g. from an earlier session) for this volume.

        The cache must have been extracted from this volume: its shape and LPS geometry must match the node's
        (world geometry, parent transforms applied). Returns the opened FeatureCache.
        """
        from MedDINOv3Core.feature_cache import FeatureCache

        geometry = _node_grid(volume_node) if geometry is None else geometry
        cache = FeatureCache.open(cache_dir)
        cache_grid = Volume.geometry_of(cache.shape, cache.spacing, cache.origin, cache.direction)
        if not cache_grid.same_geometry(geometry, tol=1e-4):
            raise RuntimeError(
                f"the feature cache {cache_dir} was extracted from another volume or geometry (cache {cache.shape}, "
                f"volume '{volume_node.GetName()}' {geometry.shape}); compute the features again"
            )
        previous = self._caches.get(volume_node.GetID())
        if previous is None or Path(previous[0].path) != Path(cache.path):
            self.feature_models.pop(volume_node.GetID(), None)  # models known to match the previous cache
        self._caches[volume_node.GetID()] = (cache, geometry)
        self._pca_maps.pop(str(cache.path), None)
        return cache

    def has_features(self, volume_node) -> bool:
        """True when an explore job has finished for this volume node."""
        return volume_node is not None and volume_node.GetID() in self._caches

    def features_for(self, volume_node, model: str) -> Path | None:
        """The volume's feature cache folder when it was extracted with ``model``'s backbone (or ``model`` was
        trained on it: ``feature_models``) and is still on disk; else None (extract first)."""
        if not self.has_features(volume_node):
            return None
        cache, _ = self._caches[volume_node.GetID()]
        served = self.feature_models.get(volume_node.GetID(), set())
        path = Path(cache.path)
        if self.model_reference(model) not in served or not (path / "header.json").is_file():
            return None
        return path

    def _cache(self, volume_node) -> tuple[Any, Volume]:
        if not self.has_features(volume_node):
            name = volume_node.GetName() if volume_node is not None else "(none)"
            raise RuntimeError(f"no features for volume '{name}' yet; run feature extraction (explore) first")
        return self._caches[volume_node.GetID()]

    def similarity_volume(self, volume_node, ras_points, scope: str = "volume", combine: str = "mean") -> Volume:
        """The cosine-similarity map (float32 Volume on the volume's grid) of the patches under world RAS point(s)."""
        from MedDINOv3Core.explore import similarity_map

        cache, geometry = self._cache(volume_node)
        lps = ras_to_lps_point(np.atleast_2d(np.asarray(ras_points, dtype=np.float64)))
        out = self.similarity_overlay.buffer(geometry.shape)  # the overlay node's own memory: no copy per click
        if out is None:  # no overlay node of this shape yet: its first update creates it from this map
            out = np.empty(geometry.shape, dtype=np.float32)
        sim = similarity_map(cache, lps, space="lps", scope=scope, combine=combine, out=out)
        return geometry.with_array(sim)

    def show_similarity(self, volume_node, ras_point, scope: str = "volume", combine: str = "mean"):
        """Update the ONE similarity overlay for a click at world RAS ``ras_point`` (or points (n, 3)) and show it
        over the volume in every slice view; returns the overlay node."""
        from MedDINOv3SlicerLib.views import show_overlay

        node = self.similarity_overlay.update(self.similarity_volume(volume_node, ras_point, scope, combine))
        show_overlay(self.scene, volume_node, node, self.similarity_overlay.opacity)
        return node

    def show_pca(self, volume_node):
        """Update the ONE PCA overlay (RGB uint8) for the volume (fitted once per feature cache); returns the node."""
        from MedDINOv3Core.explore import pca_map

        cache, geometry = self._cache(volume_node)
        key = str(cache.path)
        if key not in self._pca_maps:
            self._pca_maps[key] = pca_map(cache)
        from MedDINOv3SlicerLib.views import show_overlay

        node = self.pca_overlay.update(self._pca_maps[key], geometry)
        show_overlay(self.scene, volume_node, node, self.pca_overlay.opacity)
        return node

    def set_overlay_opacity(self, opacity: float) -> None:
        """The similarity and PCA overlays' opacity in the slice views (an opacity slider; kept for later clicks)."""
        from MedDINOv3SlicerLib.views import clamp_opacity, set_overlay_opacity

        opacity = clamp_opacity(opacity)
        for overlay in (self.similarity_overlay, self.pca_overlay):
            overlay.opacity = opacity
            set_overlay_opacity(self.scene, overlay.node, opacity)

    def set_similarity_threshold(self, value: float | None):
        """Hide similarities below ``value`` (None: show all) on the shown map, without recomputing it (a
        threshold slider; kept for later clicks); returns the similarity node (None before the first click)."""
        return self.similarity_overlay.set_threshold(value)

    def hide_overlays(self) -> None:
        """Take the similarity and PCA overlays out of the slice views (the nodes stay, for the next click)."""
        from MedDINOv3SlicerLib.views import hide_overlay

        for overlay in (self.similarity_overlay, self.pca_overlay):
            hide_overlay(self.scene, overlay.node)

    # ------------------------------------------------------------------------------------------- finetune

    def export_training_case(
        self,
        volume_node,
        segmentation_node,
        dataset_dir: str | os.PathLike,
        segment_ids: Sequence[str] | None = None,
        case: str = "case",
    ) -> Path:
        """Write the volume and its segmentation (labelmap on the volume's grid) as an nnU-Net v2 raw dataset.

        The dataset.json declares the segments as classes (values 1..n in segment order, unique names) and carries
        their colours and terminology (``meddinov3_label_properties``) into the trained card.
        """
        from MedDINOv3Core.data.nnunet_dataset import write_dataset_json
        from MedDINOv3Core.volume_io import write_volume

        root = Path(dataset_dir)
        labelmap, labels = segmentation_to_labelmap(segmentation_node, volume_node, segment_ids)
        if not labelmap.array.any():
            raise ValueError(f"segmentation '{segmentation_node.GetName()}' is empty; paint a few slices first")
        unique_names(labels)
        volume = volume_from_node(volume_node)
        write_volume(volume, root / "imagesTr" / f"{case}_0000.nrrd")
        write_volume(labelmap, root / "labelsTr" / f"{case}.nrrd")
        write_dataset_json(root, labels, name=root.name, num_training=1, file_ending=".nrrd")
        painted = int(np.count_nonzero(labelmap.array.reshape(labelmap.shape[0], -1).any(axis=1)))
        log.info("exported %s: %d classes, %d labelled slices", root, len(labels), painted)
        return root

    def finetune_job(
        self,
        volume_node,
        segmentation_node,
        base_model: str,
        mode: str = "fewshot",
        name: str | None = None,
        output_dir: str | os.PathLike | None = None,
        extra_overrides: Iterable[str] = (),
        segment_ids: Sequence[str] | None = None,
        device: str | None = None,
        dataset_dir: str | os.PathLike | None = None,
        features: str | os.PathLike | None = None,
    ) -> Job:
        """A job fine-tuning ``base_model`` on the painted segmentation; ``result()`` is the new card's folder.

        Args:
            volume_node, segmentation_node: the image and its (partial) segmentation; in fewshot mode only slices
                with at least one labelled voxel are used.
            base_model: the starting model (registry / local name, card folder).
            mode: "fewshot" (frozen backbone + light head, seconds on a CPU), "decoder" or "full".
            name: the new model's name (default "<base>-<mode>-<time>"); it is registered under this name.
            output_dir: the run folder (default ``user_dir/models/<name>``); the card is ``output_dir/best``.
            extra_overrides: recipe ``key=value`` overrides (e.g. "iterations_per_epoch=20").
            segment_ids: the segments to train on (default all).
            device: override the recipe's device (the fewshot recipe uses the CPU).
            dataset_dir: an nnU-Net dataset written already (the few-shot loop's, with an ignore label).
            features: the volume's feature cache (few-shot: the painted slices' features come from it).
        """
        if mode not in FINETUNE_RECIPES:
            raise ValueError(f"mode must be one of {sorted(FINETUNE_RECIPES)}, got {mode!r}")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = name or f"{_slug(Path(str(base_model)).name)}-{mode}-{stamp}"
        out = Path(output_dir) if output_dir is not None else self.user_dir / "models" / _slug(name)
        if output_dir is None and out.exists():  # two rounds within a second: a new folder, a new name
            n = 2
            while out.with_name(f"{out.name}-{n}").exists():
                n += 1
            name, out = f"{name}-{n}", out.with_name(f"{out.name}-{n}")
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"output folder {out} exists and is not empty; choose another name or folder")
        folder = self._job_dir("finetune")
        if dataset_dir is None:
            dataset_dir = self.export_training_case(volume_node, segmentation_node, folder / "Dataset001", segment_ids)
        args = ["--config", FINETUNE_RECIPES[mode], "--data", str(dataset_dir), "--out", str(out)]
        args += ["--init", self.model_reference(base_model), "--mode", mode]
        if features is not None:
            args += ["--features", str(features)]
        if device is not None:
            args += ["--device", device]
        args += [f"name={name}", *[str(o) for o in extra_overrides]]

        def on_finish(job: Job) -> Path:
            done = [e for e in job.events if e.stage == "done" and "model" in e.data]
            card = Path(done[-1].data["model"]) if done else out / "best"
            self.register_model(card, name)
            return card

        return Job(training_command("finetune", *args, python=self.python), cwd=folder, on_finish=on_finish)

    # ------------------------------------------------------------------------------------------ RT export

    def export_rtstruct(
        self,
        volume_node,
        segmentation_node,
        output_dir: str | os.PathLike,
        use_slicerrt: bool | None = None,
        patient: dict[str, str] | None = None,
        series_description: str = "MedDINOv3 segmentation",
        file_for_instance: Callable[[str], str | os.PathLike | None] | None = None,
    ) -> Path:
        """Export the segmentation as an RT Structure Set on the volume, keeping the volume's DICOM identity.

        A volume loaded from DICOM keeps its patient, study and frame of reference (from the subject hierarchy, see
        ``dicom_identity``); the core writer then references the source series itself when its files are found and
        still fit the volume, else writes the volume as a CT series of the same patient and study. SlicerRT always
        writes the CT series too.

        Args:
            volume_node, segmentation_node: the CT and its segmentation.
            output_dir: the folder to write (created).
            use_slicerrt: True: SlicerRT's exporter (error without it); False: MedDINOv3Core.dicom; None: SlicerRT
                when installed, else the core writer.
            patient: PatientName / PatientID for a volume without DICOM identity (a DICOM volume keeps its own).
            series_description: the RT Structure Set's Series Description (core writer).
            file_for_instance: ``SOP Instance UID -> file`` for the core writer (default: Slicer's DICOM database).

        Returns:
            the RTSTRUCT file (core writer) or the output folder (SlicerRT).
        """
        from MedDINOv3SlicerLib import rtexport

        out = Path(output_dir)
        if use_slicerrt is None:
            use_slicerrt = rtexport.slicerrt_available()
        if use_slicerrt:
            return rtexport.export_with_slicerrt(self.scene, volume_node, segmentation_node, out, patient or {})
        return rtexport.export_with_core_writer(
            volume_node, segmentation_node, out, patient, series_description, file_for_instance
        )


__all__ = ["FEATURE_LAYERS", "FINETUNE_RECIPES", "MedDINOv3Logic", "default_features_root", "default_user_dir"]
