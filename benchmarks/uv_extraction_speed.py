"""Speed, memory and sub-voxel error of :func:`poi_nnunet.inference.uv_extraction.extract_template_points`.

Speed: a 256x256 map with an elliptic mask of ~30 % of the image and a 96^3 map with an
ellipsoid of ~30 %, 20 / 100 / 500 / 720 targets (and 5000, to show the growth in P); best wall
time of ``--repeats`` calls and the peak of numpy's allocations during one call (``tracemalloc``;
the KD-tree's own C++ nodes are not traced, they are ``O(N)`` and independent of ``P``).

Error: synthetic maps whose truth is known by construction. A map is
``uv(x) = A (x - c + w(x))`` with ``A`` a rotation times per-axis scales that send the structure's
semi-axes to 1 and ``w`` zero (``affine``) or a smooth sinusoidal warp of slope 0.3 (``warped``,
still one-to-one). Targets are ``uv(x_true)`` at random sub-voxel positions in the inner 80 % of
the structure, so ``x_true`` is the exact answer; ``noise`` adds i.i.d. Gaussian noise (uv units) to
every voxel of the map. Structures: small (semi-axes 14 x 10 voxels, ~0.1 uv per voxel), medium
(40 x 30) and large (90 x 70, ~0.015 uv per voxel) in 2D, and a 40 x 34 x 30 ellipsoid in 3D.
Cells: mean / p95 Euclidean error in voxels over ``--points`` targets.

Run: ``python benchmarks/uv_extraction_speed.py`` (CPU, about a minute).
"""
from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from poi_nnunet.inference.uv_extraction import extract_template_points

Variant = Tuple[str, Dict]
VARIANTS: List[Variant] = [
    ("nearest", dict(temperature=0.0, refine=False)),
    ("T=1 (seed)", dict(temperature=1.0, refine=False)),
    ("T=0.1", dict(temperature=0.1, refine=False)),
    ("T=0.03", dict(temperature=0.03, refine=False)),
    ("T=0.01", dict(temperature=0.01, refine=False)),
    ("T=0.003", dict(temperature=0.003, refine=False)),
    ("refine r=1", dict(refine=True, refine_radius=1)),
    ("refine r=2", dict(refine=True, refine_radius=2)),
    ("refine r=3", dict(refine=True, refine_radius=3)),
]


def _rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A random rotation ``(D, D)``."""
    if dim == 2:
        a = rng.uniform(0, 2 * np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()


def synthetic_map(shape: Sequence[int], semi: Sequence[float], warped: bool, rng: np.random.Generator):
    """``(uv (D, *S), mask (*S), f)``: an ellipsoid mask with semi-axes ``semi`` at a sub-voxel centre and
    its map ``f`` (``(..., D)`` positions -> ``(..., D)`` uv), evaluated at the voxel centres."""
    dim = len(shape)
    semi = np.asarray(semi, dtype=np.float64)
    centre = np.asarray(shape, dtype=np.float64) / 2 + rng.uniform(-0.5, 0.5, dim)
    a = _rotation(dim, rng) @ np.diag(1.0 / semi)
    wavelength = 1.5 * semi.max()
    amplitude = 0.3 * wavelength / (2 * np.pi) if warped else 0.0
    phase = rng.uniform(0, 2 * np.pi, dim)

    def f(x: np.ndarray) -> np.ndarray:
        rel = x - centre
        shifted = np.roll(rel, 1, axis=-1)  # each axis warped along the next: no axis moves itself
        w = amplitude * np.sin(2 * np.pi * shifted / wavelength + phase)
        return (rel + w) @ a.T

    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    mask = (((grid - centre) / semi) ** 2).sum(-1) < 1.0
    uv = np.moveaxis(f(grid), -1, 0)
    return uv, mask, f, centre, semi


def interior_points(centre: np.ndarray, semi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, D)`` positions uniform in the ellipsoid shrunk to 80 %."""
    dim = len(centre)
    out = np.empty((0, dim))
    while len(out) < n:
        u = rng.uniform(-1, 1, (4 * n, dim))
        out = np.concatenate([out, u[(u**2).sum(1) < 1]])
    return centre + 0.8 * out[:n] * semi


def speed(repeats: int) -> None:
    rng = np.random.default_rng(0)
    print("\n## speed (default settings; refine=False beside it)\n")
    print("| map | masked voxels | P | time ms (default) | peak MiB (default) | time ms (no refine) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape, semi in (((256, 256), (90.0, 70.0)), ((96, 96, 96), (44.0, 40.0, 36.0))):
        uv, mask, f, centre, semi_ = synthetic_map(shape, semi, False, rng)
        uv = uv.astype(np.float32)
        for p in (20, 100, 500, 720, 5000):
            targets = f(interior_points(centre, semi_, p, rng))
            t_def = _best_time(lambda: extract_template_points(uv, mask, targets), repeats)
            t_raw = _best_time(lambda: extract_template_points(uv, mask, targets, refine=False), repeats)
            tracemalloc.start()
            extract_template_points(uv, mask, targets)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"| {'x'.join(map(str, shape))} | {int(mask.sum())} | {p} | {1e3 * t_def:.1f} | "
                  f"{peak / 2**20:.1f} | {1e3 * t_raw:.1f} |")


def _best_time(call: Callable[[], object], repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def accuracy(points: int, noises: Sequence[float]) -> None:
    rng = np.random.default_rng(1)
    print("\n## error in voxels, mean / p95\n")
    print("| map | noise uv | " + " | ".join(name for name, _ in VARIANTS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in VARIANTS) + " |")
    cases = [("2D small", (64, 64), (14.0, 10.0)), ("2D medium", (128, 128), (40.0, 30.0)),
             ("2D large", (256, 256), (90.0, 70.0)), ("3D", (96, 96, 96), (40.0, 34.0, 30.0))]
    for name, shape, semi in cases:
        for warped in (False, True):
            uv, mask, f, centre, semi_ = synthetic_map(shape, semi, warped, rng)
            truth = interior_points(centre, semi_, points, rng)
            targets = f(truth)
            for noise in noises:
                noisy = uv + rng.normal(0.0, noise, uv.shape) if noise > 0 else uv
                cells = []
                for _, kwargs in VARIANTS:
                    got = extract_template_points(noisy, mask, targets, **kwargs).positions
                    err = np.linalg.norm(got - truth, axis=1)
                    cells.append(f"{err.mean():.3f} / {np.percentile(err, 95):.3f}")
                label = f"{name} {'warped' if warped else 'affine'}"
                print(f"| {label} | {noise:g} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=500, help="targets per map in the error table")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per size (best is kept)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.005, 0.01])
    args = parser.parse_args(argv)
    speed(args.repeats)
    accuracy(args.points, args.noise)


if __name__ == "__main__":
    main()
