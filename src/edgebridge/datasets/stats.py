"""Per-episode and data-set statistics in LeRobot's layout (``meta/stats.json`` and the ``stats/...``
columns of ``meta/episodes``).

Each numeric feature gets ``min max mean std count q01 q10 q50 q90 q99``, reduced over frames (and over
every axis but the last for arrays such as a cloud (N, 3), so per coordinate); ``count`` is the number of
frames. Camera features get per-channel values in [0, 1], shaped (3, 1, 1), from an evenly spaced
sample of frames (LeRobot's sample size, images of 300 px or more subsampled to about 150 px).
Quantiles are exact (``numpy.quantile``) where LeRobot estimates them from histograms; the two agree
to the histogram's bin width. Data-set statistics combine the episodes' as LeRobot's
``aggregate_stats`` does (count-weighted mean, pooled variance, min of mins, max of maxes,
count-weighted quantiles).
"""

from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)


def sample_indices(n: int, lo: int = 100, hi: int = 10_000, power: float = 0.75) -> np.ndarray:
    """Frames LeRobot samples for image statistics (``estimate_num_samples`` + an even spread)."""
    lo = min(lo, n)
    k = max(lo, min(int(n ** power), hi))
    return np.round(np.linspace(0, n - 1, k)).astype(int)


def _vector_stats(x: np.ndarray, count: int) -> dict:
    x = np.asarray(x)
    out = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0),
           "count": np.array([count])}
    if x.shape[0] < 2:
        for k in QUANTILE_KEYS:
            out[k] = out["mean"].copy()
    else:
        qs = np.quantile(x.astype(np.float64), QUANTILES, axis=0)
        for k, q in zip(QUANTILE_KEYS, qs):
            out[k] = q
    return out


def feature_stats(values: np.ndarray) -> dict:
    """Statistics of one numeric feature over an episode: ``values`` (T, *shape)."""
    v = np.asarray(values)
    t = v.shape[0]
    if v.ndim == 1:  # a (1,) feature stored as one value per frame
        return _vector_stats(v.reshape(-1, 1), t)
    return _vector_stats(v.reshape(-1, v.shape[-1]), t)


def image_stats(frames: np.ndarray) -> dict:
    """Per-channel statistics of RGB frames (T, H, W, 3) uint8, in [0, 1], shaped (3, 1, 1)."""
    idx = sample_indices(len(frames))
    img = np.asarray(frames)[idx]
    h, w = img.shape[1:3]
    if max(h, w) >= 300:
        step = int(max(h, w) / 150)
        img = img[:, ::step, ::step]
    s = _vector_stats(img.reshape(-1, 3), len(idx))
    return {k: (v if k == "count" else (v / 255.0).reshape(3, 1, 1)) for k, v in s.items()}


def aggregate(stats_list: list[dict]) -> dict:
    """Data-set statistics from per-episode ones (each {feature: {stat: array}})."""
    keys = {k for s in stats_list for k in s}
    out = {}
    for key in keys:
        ss = [s[key] for s in stats_list if key in s]
        means = np.stack([s["mean"] for s in ss]).astype(np.float64)
        var = np.stack([s["std"] for s in ss]).astype(np.float64) ** 2
        counts = np.stack([s["count"] for s in ss]).astype(np.float64)
        total = counts.sum(axis=0)
        c = counts
        while c.ndim < means.ndim:
            c = c[..., None]
        mean = (means * c).sum(axis=0) / total
        variance = ((var + (means - mean) ** 2) * c).sum(axis=0) / total
        agg = {"min": np.min(np.stack([s["min"] for s in ss]), axis=0),
               "max": np.max(np.stack([s["max"] for s in ss]), axis=0),
               "mean": mean, "std": np.sqrt(variance), "count": total.astype(np.int64)}
        for q in QUANTILE_KEYS:
            if all(q in s for s in ss):
                agg[q] = (np.stack([s[q] for s in ss]).astype(np.float64) * c).sum(axis=0) / total
        out[key] = agg
    return out


def to_json(stats: dict) -> dict:
    """{feature: {stat: list}} (what ``meta/stats.json`` holds)."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def from_json(d: dict) -> dict:
    return {k: {s: np.asarray(v) for s, v in st.items()} for k, st in d.items()}
