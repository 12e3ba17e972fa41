"""Plots a reader can use: short legend labels (shared parts in the title), points for one-N sweeps,
zero-memory readings on the axis, a sentence instead of an empty figure."""
import io

import numpy as np
from PIL import Image

from attnbench.perf import plots

from perf_helpers import synthetic


def coloured_pixels(png: bytes) -> int:
    """Pixels that are clearly coloured (data markers and lines); text, axes and grid are grey."""
    hsv = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").convert("HSV"))
    return int(((hsv[..., 1] > 120) & (hsv[..., 2] > 60)).sum())


def test_legend_labels_keep_only_what_differs():
    results = [synthetic(b, 256, [1e-3]) for b in ("numpy", "torch_eager")]
    groups = plots.series(results, "N")
    labels, shared = plots.short_labels(groups)
    assert sorted(labels.values()) == ["numpy", "torch_eager"]
    assert shared == "fwd, float32, B1, H2, D16, not causal"


def test_a_sweep_with_one_n_still_draws_its_points():
    results = [synthetic(b, 256, [t]) for b, t in (("numpy", 1e-3), ("torch_eager", 2e-3))]
    png = plots.time_vs_n(results)
    assert isinstance(png, bytes) and coloured_pixels(png) > 50


def test_zero_memory_readings_are_drawn():
    results = [synthetic("lean", n, [1e-3], peak_bytes=0, predicted_pattern_bytes=0) for n in (256, 512)]
    png = plots.memory_vs_n(results)
    assert isinstance(png, bytes) and coloured_pixels(png) > 50


def test_one_h_is_a_sentence_not_an_empty_figure():
    reason = plots.time_vs_h([synthetic("numpy", n, [1e-3]) for n in (256, 512)])
    assert isinstance(reason, str) and "only H = 2 was swept" in reason
    png = plots.time_vs_h([synthetic("numpy", 256, [1e-3], H=h, Hkv=h) for h in (2, 4, 8)])
    assert isinstance(png, bytes) and coloured_pixels(png) > 50


def test_the_h_sweeps_lone_points_stay_out_of_the_n_plot():
    curve = [synthetic("numpy", n, [1e-3]) for n in (256, 512)]
    lone = [synthetic("numpy", 256, [1e-3], H=8, Hkv=8)]
    capped = [synthetic("triton", 256, [1e-3])]                  # same settings as the curve, one N only
    assert list(plots.series(curve + lone + capped, "N")) == list(plots.series(curve + capped, "N"))
    assert len(plots.series(curve + lone + capped, "N")) == 2
