"""Two-stage inference: segment lesion areas on T2 FLAIR, classify each lesion on T1 FLAIR,
correct the label map.

All arrays are ``(slices, rows, cols)`` on the T2 FLAIR grid, slices ordered along the slice
normal. Spacings are in mm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label, regionprops

from models.package import PRIMARY_FILE, SECONDARY_FILE, ModelManifest, verify_package
from models.preprocessing import (
    blend_tiles,
    extract_roi,
    from_model_grid,
    mirror_views,
    normalise_volume,
    primary_input,
    spacing_grid_shape,
    tiles_of,
    to_model_grid,
)
from models.runtime import import_tensorflow
from node.domain.lesions import LABEL_VALUES, Lesion, LesionClass, LesionSegmentation

logger = logging.getLogger(__name__)

WARM_UP_SLICES = 24  # a typical 2D FLAIR study
# Tiled inference on a fixed-spacing grid: neighbouring tiles share this many pixels, blended
# (models.preprocessing.tile_weights); tiles go through the network this many at a time, which
# bounds memory at any matrix.
TILE_OVERLAP = 32
TILES_PER_CALL = 16
# The secondary network's ROIs per call: a study has tens, but a network that is still
# training (validation between epochs) can call thousands of spots lesions, and one call on
# all of them took 38 GB on Keras' JAX backend.
ROIS_PER_CALL = 512


@dataclass(frozen=True)
class InferenceSettings:
    """How a package's networks are run. With ``grid_spacing_mm`` None every slice is resized
    to ``input_matrix`` (packages before 0.6); otherwise slices are resampled to square pixels
    of ``grid_spacing_mm`` (their own field of view, no shrinking of fine matrices) and the
    primary network runs on overlapping ``input_matrix`` tiles. ``laci_temperature`` divides
    the secondary network's logit (temperature scaling, fitted on validation subjects), which
    changes its certainty but never its verdict at ``laci_threshold`` 0.5. A lesion is a 3D
    component of voxels at ``outline_threshold`` or above that reaches ``lesion_threshold``
    somewhere (hysteresis: found where the network is sure, outlined where it leans to lesion);
    ``outline_threshold`` None is ``lesion_threshold``. ``mirror_axes``: the in-plane axes the
    primary network's input is also mirrored along, every combination, its probabilities
    averaged (test-time mirroring; one more primary pass per view)."""

    input_matrix: tuple[int, int]
    lesion_threshold: float
    laci_threshold: float
    min_lesion_voxels: int
    grid_spacing_mm: float | None = None
    laci_temperature: float = 1.0
    outline_threshold: float | None = None
    mirror_axes: tuple[str, ...] = ()

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> InferenceSettings:
        return cls(
            input_matrix=manifest.input_matrix,
            lesion_threshold=manifest.lesion_threshold,
            laci_threshold=manifest.laci_threshold,
            min_lesion_voxels=manifest.min_lesion_voxels,
            grid_spacing_mm=manifest.grid_spacing_mm,
            laci_temperature=manifest.laci_temperature,
            outline_threshold=manifest.outline_threshold,
            mirror_axes=manifest.mirror_axes,
        )

    def grid_shape(self, shape: tuple[int, int],
                   pixel_spacing_mm: tuple[float, float] | None) -> tuple[int, int]:
        """The in-plane matrix a slice of ``shape`` at ``pixel_spacing_mm`` is processed on."""
        if self.grid_spacing_mm is None:
            return self.input_matrix
        if pixel_spacing_mm is None:
            raise ValueError("a fixed-spacing model needs the slices' pixel spacing")
        return spacing_grid_shape(shape, pixel_spacing_mm, self.grid_spacing_mm)


def temperature_scaled(probability: float, temperature: float) -> float:
    """``sigmoid(logit(probability) / temperature)``: a probability with its logit divided by
    ``temperature`` (> 1 softens it towards 0.5, < 1 sharpens it)."""
    p = min(max(probability, 1e-7), 1 - 1e-7)
    return float(1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature)))


class TwoStageEngine:
    """Holds both networks, loaded once; :meth:`segment` runs a whole study."""

    def __init__(self, primary: object, secondary: object, settings: InferenceSettings,
                 mixed_precision: bool = False) -> None:
        """``mixed_precision``: whether the networks compute in float16 (see :meth:`load`)."""
        self._primary = primary
        self._secondary = secondary
        self.settings = settings
        self.mixed_precision = mixed_precision
        self.context_slices = primary_context_slices(primary)
        self._primary_call = _compiled(primary)
        self._secondary_call = _compiled(secondary)

    @classmethod
    def load(cls, package_dir: Path, mixed_precision: bool | None = None) -> TwoStageEngine:
        """Verify the package's checksums, then load both networks (TensorFlow imported here).
        ``mixed_precision``: compute in float16 with float32 weights and outputs; None (the
        default) turns it on when TensorFlow sees a GPU, where tensor cores make it pay."""
        manifest = verify_package(package_dir)
        import_tensorflow()
        import keras  # imported late: the SCP process never pays for TensorFlow
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            try:  # share the card with other processes instead of taking all its memory
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised by an earlier load in this process
                pass
        devices = [device.name for device in tf.config.list_logical_devices()]
        if mixed_precision is None:
            mixed_precision = bool(tf.config.list_physical_devices("GPU"))
        logger.info("loading model %s %s on devices %s, mixed precision %s", manifest.name,
                    manifest.version, devices, "on" if mixed_precision else "off")
        primary = keras.saving.load_model(package_dir / PRIMARY_FILE, compile=False)
        secondary = keras.saving.load_model(package_dir / SECONDARY_FILE, compile=False)
        if mixed_precision:
            primary, secondary = mixed_precision_copy(primary), mixed_precision_copy(secondary)
        engine = cls(primary, secondary, InferenceSettings.from_manifest(manifest), mixed_precision)
        engine.warm_up()
        return engine

    def warm_up(self, slices: int = WARM_UP_SLICES) -> None:
        """Run both networks once on zeros of a typical study's size. The first call at a new
        largest batch costs seconds (TensorFlow's CPU kernels and buffers are set up then);
        this moves that cost from the first study to model loading."""
        batch = TILES_PER_CALL if self.settings.grid_spacing_mm is not None else slices
        _predict(self._primary_call,
                 np.zeros((batch, *self.settings.input_matrix, self.context_slices), np.float32))
        self.classify_rois(np.zeros((4 * slices, 64, 64), np.float32))

    def predict_lesion_probability(
        self, t2: np.ndarray, pixel_spacing_mm: tuple[float, float] | None = None
    ) -> np.ndarray:
        """The primary network's lesion probability, ``(slices, rows, cols)`` like ``t2``:
        every slice resized to the model matrix in one batched call, or (a fixed-spacing
        package) resampled to its grid and run in overlapping tiles, then back to ``t2``'s
        grid. ``pixel_spacing_mm`` (between rows, between columns) is needed by the latter.
        With ``settings.mirror_axes`` each slice or tile is averaged over its mirrored views."""
        shape = self.settings.grid_shape(t2.shape[1:], pixel_spacing_mm)
        batch = primary_input(t2, shape, self.context_slices)
        if self.settings.grid_spacing_mm is None:
            probability = self._lesion_channel(batch)
        else:
            tiles, places = tiles_of(batch, self.settings.input_matrix[0], TILE_OVERLAP)
            outputs = np.concatenate(
                [self._lesion_channel(tiles[start : start + TILES_PER_CALL])
                 for start in range(0, len(tiles), TILES_PER_CALL)])
            probability = blend_tiles(outputs, places, batch.shape[:3], TILE_OVERLAP)
        return np.clip(from_model_grid(probability, t2.shape[1:]), 0.0, 1.0)

    def _lesion_channel(self, batch: np.ndarray) -> np.ndarray:
        """The primary network's lesion probability on ``batch`` ``(n, rows, cols, slices)``,
        ``(n, rows, cols)``: the mean over the mirrored views of ``settings.mirror_axes``, each
        mirrored back before it is added."""
        views = mirror_views(self.settings.mirror_axes)
        total = np.zeros(batch.shape[:3], dtype=np.float32)
        for axes in views:  # np.flip along () is the batch itself, no copy
            lesion = _predict(self._primary_call, np.ascontiguousarray(np.flip(batch, axes)))
            total += np.flip(lesion[..., 1], axes)
        return total / len(views)

    def classify_rois(self, rois: np.ndarray) -> np.ndarray:
        """Secondary network over ``(n, 64, 64)`` ROIs, :data:`ROIS_PER_CALL` at a time;
        returns P(LACI), ``(n,)``."""
        if len(rois) == 0:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate([
            _predict(self._secondary_call, rois[start : start + ROIS_PER_CALL, ..., np.newaxis])
            .reshape(-1) for start in range(0, len(rois), ROIS_PER_CALL)])

    def segment(
        self,
        t2: np.ndarray,
        t1: np.ndarray | None,
        t1_available: np.ndarray | None,
        pixel_spacing_mm: tuple[float, float],
        slice_spacing_mm: float,
        probability: np.ndarray | None = None,
    ) -> LesionSegmentation:
        """Segment and classify a study.

        ``t1`` is T1 FLAIR already resampled onto the T2 grid, or None; ``t1_available[k]`` is
        False where T2 slice ``k`` has no T1 FLAIR counterpart. ``probability``: this study's
        :meth:`predict_lesion_probability`, when already computed (threshold calibration).
        """
        if t1 is not None and t1.shape != t2.shape:
            raise ValueError(f"T1 FLAIR shape {t1.shape} differs from T2 FLAIR {t2.shape}")
        if probability is None:
            probability = self.predict_lesion_probability(t2, pixel_spacing_mm)
        elif probability.shape != t2.shape:
            raise ValueError(f"probability {probability.shape} differs from T2 FLAIR {t2.shape}")
        components = lesion_components(probability, self.settings.lesion_threshold,
                                       self.settings.outline_threshold)
        regions = [
            region
            for region in regionprops(components)
            if region.area >= self.settings.min_lesion_voxels
        ]
        regions.sort(key=lambda region: tuple(region.centroid))

        available = (
            np.zeros(t2.shape[0], dtype=bool)
            if t1 is None or t1_available is None
            else np.asarray(t1_available, dtype=bool)
        )
        # Stage two: one ROI per lesion per slice it occupies, on the model grid.
        rois: list[np.ndarray] = []
        roi_owner: list[tuple[int, int]] = []  # (region index, pixel count on that slice)
        # Only the slices a lesion lies on are resampled (each slice is resized on its own,
        # so this is the same as resampling all); a threshold sweep segments a study dozens
        # of times, and most slices hold no lesion.
        region_slices = [np.unique(region.coords[:, 0]) for region in regions]
        wanted = sorted({int(k) for slices in region_slices for k in slices if available[k]})
        if t1 is not None and wanted:
            grid = self.settings.grid_shape(t2.shape[1:], pixel_spacing_mm)
            normalised = normalise_volume(np.where(available[:, None, None], t1, 0.0))
            t1_model = dict(zip(wanted, to_model_grid(normalised[wanted], grid), strict=True))
            row_scale = grid[0] / t2.shape[1]
            col_scale = grid[1] / t2.shape[2]
            for index, (region, slices) in enumerate(zip(regions, region_slices, strict=True)):
                for slice_index in slices:
                    if not available[slice_index]:
                        continue
                    in_slice = region.coords[region.coords[:, 0] == slice_index]
                    # Centres of pixels map to (i + 0.5) * scale - 0.5 on the resized grid.
                    centre_row = (in_slice[:, 1].mean() + 0.5) * row_scale - 0.5
                    centre_col = (in_slice[:, 2].mean() + 0.5) * col_scale - 0.5
                    rois.append(extract_roi(t1_model[slice_index], centre_row, centre_col))
                    roi_owner.append((index, len(in_slice)))
        laci = self.classify_rois(np.stack(rois) if rois else np.zeros((0, 64, 64), np.float32))

        weighted = np.zeros(len(regions))
        weights = np.zeros(len(regions))
        for (index, pixels), p in zip(roi_owner, laci, strict=True):
            weighted[index] += pixels * float(p)
            weights[index] += pixels

        # Correct the segmentation with the secondary network's verdicts.
        labels = np.zeros(t2.shape, dtype=np.uint8)
        numbers = np.zeros(t2.shape, dtype=np.uint16)
        pixel_area = float(pixel_spacing_mm[0] * pixel_spacing_mm[1])
        lesions: list[Lesion] = []
        for index, region in enumerate(regions):
            p_laci: float | None = None
            lesion_class = LesionClass.UNCLASSIFIED
            if weights[index] > 0:
                p_laci = temperature_scaled(float(weighted[index] / weights[index]),
                                            self.settings.laci_temperature)
                lesion_class = (
                    LesionClass.LACI if p_laci >= self.settings.laci_threshold else LesionClass.FCI
                )
            coords = region.coords
            labels[coords[:, 0], coords[:, 1], coords[:, 2]] = LABEL_VALUES[lesion_class]
            numbers[coords[:, 0], coords[:, 1], coords[:, 2]] = index + 1
            slices, counts = np.unique(coords[:, 0], return_counts=True)
            lesions.append(
                Lesion(
                    number=index + 1,
                    lesion_class=lesion_class,
                    laci_probability=None if p_laci is None else round(p_laci, 4),
                    voxel_count=int(region.area),
                    volume_mm3=float(region.area) * pixel_area * slice_spacing_mm,
                    largest_area_mm2=float(counts.max()) * pixel_area,
                    slices=tuple(int(s) for s in slices),
                    centroid=tuple(float(c) for c in region.centroid),  # type: ignore[arg-type]
                    largest_diameter_mm=in_plane_diameter_mm(coords, pixel_spacing_mm),
                )
            )
        return LesionSegmentation(labels=labels, lesion_numbers=numbers, lesions=tuple(lesions))


def lesion_components(probability: np.ndarray, lesion_threshold: float,
                      outline_threshold: float | None = None) -> np.ndarray:
    """Lesions of a probability map, labelled 1.. (0 elsewhere): 3D components (26-connected)
    of voxels at ``outline_threshold`` or above that hold a voxel at ``lesion_threshold`` or
    above. ``outline_threshold`` None, or not below ``lesion_threshold``, is the plain
    threshold at ``lesion_threshold``."""
    if outline_threshold is None or outline_threshold >= lesion_threshold:
        return np.asarray(label(probability >= lesion_threshold, connectivity=2))
    components = np.asarray(label(probability >= outline_threshold, connectivity=2))
    found = np.unique(components[probability >= lesion_threshold])
    found = found[found > 0]
    components[~np.isin(components, found)] = 0
    return components


def primary_context_slices(primary: Any) -> int:
    """How many adjacent T2 FLAIR slices the primary network takes (its input's channels): 1
    for the paper's network; the network file says, so no manifest field can contradict it."""
    return int(primary.input_shape[-1])


def mixed_precision_copy(model: Any) -> Any:
    """A copy of a functional Keras ``model`` with its weights that computes in float16 and keeps
    float32 variables (the ``mixed_float16`` policy), except its output layers, which stay
    float32 so that probabilities keep full precision. Pays on GPUs with tensor cores; on a
    CPU without float16 kernels it is slower."""
    import keras

    config = model.get_config()
    _mixed_precision_config(config)
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def _mixed_precision_config(config: dict[str, Any]) -> None:
    """Set ``mixed_float16`` on every layer of a functional model's config but its inputs and
    outputs; a nested model (an ensemble's member) gets the same rule inside."""
    output_layers = config["output_layers"]  # [name, node, tensor], or a list of them
    if output_layers and isinstance(output_layers[0], str):
        output_layers = [output_layers]
    outputs = {name for name, *_ in output_layers}
    for layer in config["layers"]:
        if layer["class_name"] == "Functional":
            _mixed_precision_config(layer["config"])
        elif layer["class_name"] != "InputLayer" and layer["config"]["name"] not in outputs:
            layer["config"]["dtype"] = "mixed_float16"


def in_plane_diameter_mm(coords: np.ndarray, pixel_spacing_mm: tuple[float, float]) -> float:
    """The largest diameter of a lesion as a radiologist measures it: on each slice, the
    longest distance between two of its pixels' centres plus one pixel (so one pixel measures
    one pixel across), the longest over all slices. ``coords`` are (slice, row, col) voxels."""
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    spacing = np.asarray(pixel_spacing_mm, dtype=np.float64)
    longest = 0.0
    for slice_index in np.unique(coords[:, 0]):
        points = coords[coords[:, 0] == slice_index][:, 1:] * spacing
        if len(points) > 64:  # the farthest pair lies on the hull: O(n log n), not O(n^2)
            try:
                points = points[ConvexHull(points).vertices]
            except QhullError:  # all on one line: the hull is degenerate, the ends suffice
                points = points[[np.argmin(points @ (points[-1] - points[0])),
                                 np.argmax(points @ (points[-1] - points[0]))]]
        if len(points) > 1:
            longest = max(longest, float(pdist(points).max()))
    return round(longest + float(spacing.mean()), 2)


def _compiled(model: object) -> Callable[[Any], Any]:
    """The network's forward pass, compiled: a ``tf.function`` on the TensorFlow backend
    (bench/inference.py: 23 % more slices/s than eager calls on this CPU; XLA gave nothing),
    its stateless call under ``jax.jit`` on JAX (where a package is trained on a GPU without
    TensorFlow, and validated as it is), the model itself on another backend. The weights are
    read at each call, so a network trained further is run as it is now. Shapes are relaxed
    on TensorFlow, so studies with other slice counts do not retrace; on JAX batches are
    padded to a power of two, so that it compiles a few shapes, not one per batch size."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        network: Any = model

        def stateless_forward(trainable: Any, non_trainable: Any, batch: Any) -> Any:
            outputs, _ = network.stateless_call(trainable, non_trainable, batch, training=False)
            return outputs

        forward = jax.jit(stateless_forward)

        def call(batch: np.ndarray) -> Any:
            # Padded to a power of two: jit compiles once per shape, and batches of every
            # size (the last tiles of a study, a study's ROIs) would each compile anew.
            count = len(batch)
            padded = 1 << max(count - 1, 0).bit_length()
            if padded != count:
                batch = np.concatenate([batch, np.zeros((padded - count, *batch.shape[1:]),
                                                        batch.dtype)])
            return forward([v.value for v in network.trainable_variables],
                           [v.value for v in network.non_trainable_variables], batch)[:count]

        return call
    if backend != "tensorflow":
        return lambda batch: model(batch, training=False)  # type: ignore[operator]
    import tensorflow as tf

    return tf.function(lambda batch: model(batch, training=False),  # type: ignore[operator]
                       reduce_retracing=True)


def _predict(call: Callable[[Any], Any], batch: np.ndarray) -> np.ndarray:
    import keras

    output = call(batch)
    return np.asarray(keras.ops.convert_to_numpy(output), dtype=np.float32)
