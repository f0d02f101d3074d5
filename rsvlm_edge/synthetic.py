"""Deterministic synthetic overhead-like scenes: INT8 calibration fallback, bench inputs, tests."""

from __future__ import annotations

import numpy as np


def synthetic_rs_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic synthetic overhead-like scenes, uint8 (n, size, size, 3): smooth colour fields
    (fields, water, vegetation) with roads and rectangular blocks. For calibration/tests only."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = rng.uniform(30, 200, size=3)
        img = np.empty((size, size, 3))
        for c in range(3):
            f = rng.uniform(1, 6, size=2)
            ph = rng.uniform(0, 2 * np.pi, size=2)
            img[:, :, c] = base[c] + 40 * np.sin(2 * np.pi * f[0] * xx + ph[0]) * np.cos(2 * np.pi * f[1] * yy + ph[1])
        for _ in range(rng.integers(0, 12)):  # buildings / fields
            x0, y0 = rng.integers(0, size, size=2)
            w, h = rng.integers(size // 16, size // 3, size=2)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, size=3)
        for _ in range(rng.integers(0, 3)):  # roads
            if rng.random() < 0.5:
                r = rng.integers(0, size)
                img[r:r + max(1, size // 40), :] = 90
            else:
                c0 = rng.integers(0, size)
                img[:, c0:c0 + max(1, size // 40)] = 90
        img += rng.normal(0, 8, size=img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out
