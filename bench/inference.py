"""Inference speed of the shipped model on this machine's CPU (or GPU when TensorFlow sees one).

Prints, for a 24-slice study at 256x256 (0.9 mm) and at 512x512 (0.45 mm):
* the whole engine (normalise, resample, primary network, connected components, secondary
  network over all ROIs in one call, label correction) in slices/s and ms per study, two ways
  in the same run with the same networks: tiled on the fixed 0.5 mm grid (256x256 tiles,
  32 pixels shared; the shipped package's way since 0.6), the same with test-time mirroring
  (each tile also mirrored left-right, or along both in-plane axes, probabilities averaged),
  and every slice resized to the 256x256 matrix (the way before 0.6, which shrinks a 512
  matrix to half);
* the primary network alone on the 24-slice batch, called three ways: eagerly, as a
  ``tf.function`` and as an XLA-compiled ``tf.function``, in slices/s and achieved GFLOP/s;
* a float32 matrix-multiply peak measured in the same run, and the ratio to it;
* the process's peak resident memory.

    .venv/bin/python bench/inference.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from models.inference import TwoStageEngine
from models.package import default_package_dir
from training.phantom import Contrast, axial_geometry, make_phantom, render_series

SLICES = 24


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm: kernels, buffers, tracing
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak_gflops(repeats: int) -> float:
    import tensorflow as tf

    n = 2048
    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    seconds = median_seconds(lambda: matmul().numpy(), repeats)
    return 2 * n**3 / seconds / 1e9


def forward_flops(model: Any, shape: tuple[int, ...]) -> float:
    """Floating-point operations of one forward pass, counted by TensorFlow's profiler on the
    frozen graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2_as_graph,
    )

    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec(shape, tf.float32))
    frozen, _ = convert_variables_to_constants_v2_as_graph(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(),
                                            cmd="op", options=options)
    return float(profile.total_float_ops)


def study(matrix: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float]:
    geometry = axial_geometry(matrix=matrix, slices=SLICES)
    phantom = make_phantom(7, geometry, lesion_count=6)
    t2 = render_series(phantom, geometry, Contrast.T2_FLAIR).pixels.astype(np.float32)
    t1 = render_series(phantom, geometry, Contrast.T1_FLAIR, seed_offset=1).pixels.astype(np.float32)
    return t2, t1, geometry.pixel_spacing, geometry.slice_spacing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    engine = TwoStageEngine.load(default_package_dir())
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices()]
    peak = matmul_peak_gflops(args.repeats)
    grid = engine.settings.input_matrix
    print(f"devices {devices}; float32 matmul peak {peak:.1f} GFLOP/s (2048x2048)")

    print(f"\nwhole engine (both networks, pre- and post-processing), {SLICES} slices:")
    shipped = engine.settings
    tiled = replace(shipped, grid_spacing_mm=shipped.grid_spacing_mm or 0.5, mirror_axes=())
    paths = {"tiled, 0.5 mm grid": tiled,
             "tiled, mirrored L-R": replace(tiled, mirror_axes=("columns",)),
             "tiled, mirrored 4x": replace(tiled, mirror_axes=("rows", "columns")),
             "whole slice, 256x256": replace(tiled, grid_spacing_mm=None)}
    for matrix in (256, 512):
        t2, t1, spacing, slice_spacing = study(matrix)
        available = np.ones(SLICES, bool)

        def segment(t2: np.ndarray = t2, t1: np.ndarray = t1, spacing: tuple[float, float] = spacing,
                    slice_spacing: float = slice_spacing, available: np.ndarray = available) -> Any:
            return engine.segment(t2, t1, available, spacing, slice_spacing)

        for name, settings in paths.items():
            engine.settings = settings
            grid = settings.grid_shape(t2.shape[1:], spacing)
            seconds = median_seconds(segment, args.repeats)
            print(f"  {matrix}x{matrix} {name:<22} (network grid {grid[0]}x{grid[1]}): "
                  f"{SLICES / seconds:6.1f} slices/s, {1000 * seconds:6.0f} ms per study")
        engine.settings = shipped
    engine_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak resident memory after the engine runs: {engine_peak:.0f} MiB\n")
    primary_flops = forward_flops(engine._primary, (1, *grid, 1))
    secondary_flops = forward_flops(engine._secondary, (1, 64, 64, 1))
    print(f"primary network {primary_flops / 1e9:.2f} GFLOP per {grid[0]}x{grid[1]} slice, "
          f"secondary {secondary_flops / 1e6:.1f} MFLOP per ROI")

    batch = tf.constant(np.random.default_rng(0).random((SLICES, *grid, 1), np.float32))
    model: Any = engine._primary  # a Keras model
    ways = {
        "eager": lambda: model(batch, training=False).numpy(),
        "tf.function": (lambda f: lambda: f(batch).numpy())(
            tf.function(lambda x: model(x, training=False), reduce_retracing=True)),
        "tf.function+XLA": (lambda f: lambda: f(batch).numpy())(
            tf.function(lambda x: model(x, training=False), jit_compile=True)),
    }
    print(f"\nprimary network, {SLICES} slices in one call:")
    print(f"  {'call':<16} {'slices/s':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for name, run in ways.items():
        seconds = median_seconds(run, args.repeats)
        achieved = primary_flops * SLICES / seconds / 1e9
        print(f"  {name:<16} {SLICES / seconds:>9.1f} {achieved:>8.1f} {achieved / peak:>8.0%}")

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this whole run, FLOP counting and XLA included: "
          f"{peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
