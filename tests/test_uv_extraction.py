"""Landmarks from a uv(w) map (poi_nnunet.inference.uv_extraction): on exact affine maps the extracted
position is the hand-computed inverse of the map; the mask is never left; K and the temperature do what
the docstring says (checked against a brute-force search over all voxels); the confidence's anchors."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from poi_nnunet.inference.uv_extraction import UvExtraction, extract_template_points, uv_confidence

TOL_VOXELS = 1e-3  # achieved on exact affine maps: ~1e-12 (the affine solve is exact there)


def _rotation(dim: int, angles) -> np.ndarray:
    if dim == 2:
        a = angles[0]
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out = np.eye(3)
    for axes, a in zip(((0, 1), (1, 2), (0, 2)), angles):
        r = np.eye(3)
        i, j = axes
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        out = out @ r
    return out


def _affine_case(shape, scales, angles, shift):
    """``uv(x) = A x + b`` on ``shape`` with ``A = R diag(scales)``: returns uv ``(D, *S)``, A, b."""
    dim = len(shape)
    a = _rotation(dim, angles) @ np.diag(scales)
    b = np.asarray(shift, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=0)
    uv = np.einsum("ij,j...->i...", a, grid) + b.reshape((dim,) + (1,) * dim)
    return uv, a, b


def _brute_nearest(uv: np.ndarray, mask: np.ndarray, target: np.ndarray, k: int):
    """The ``k`` masked voxels nearest in uv, by a full sort (the independent reference)."""
    coords = np.argwhere(mask)
    values = uv[(slice(None), *coords.T)].T
    d = np.linalg.norm(values - target, axis=1)
    order = np.argsort(d, kind="stable")[:k]
    return coords[order].astype(np.float64), d[order]


@pytest.mark.parametrize("shape, scales, angles, shift", [
    ((48, 40), (0.04, 0.06), (0.5,), (-0.9, 0.3)),
    ((20, 22, 18), (0.09, 0.11, 0.1), (0.3, -0.4, 0.7), (-0.8, -1.0, -0.9)),
])
def test_exact_affine_map_gives_its_inverse(shape, scales, angles, shift):
    uv, a, b = _affine_case(shape, scales, angles, shift)
    mask = np.ones(shape, dtype=bool)
    rng = np.random.default_rng(3)
    truth = rng.uniform(3, np.asarray(shape) - 4, (40, len(shape))) + 0.37  # never on a voxel centre
    targets = truth @ a.T + b
    inverse = np.linalg.solve(a, (targets - b).T).T  # the hand-computed inverse of the affine map
    np.testing.assert_allclose(inverse, truth, atol=1e-9)  # (the reference is what we think it is)
    out = extract_template_points(uv, mask, targets)
    assert isinstance(out, UvExtraction) and out.found.all()
    assert out.positions.shape == truth.shape and out.distance.shape == (len(truth),)
    assert np.abs(out.positions - inverse).max() < TOL_VOXELS
    # Without the refinement the softmin is biased toward its voxels' centroid, but stays sub-voxel.
    soft = extract_template_points(uv, mask, targets, refine=False)
    err = np.linalg.norm(soft.positions - inverse, axis=1)
    assert err.max() < 1.0 and err.mean() > 10 * TOL_VOXELS


def test_float16_map_and_partial_mask_stay_sub_voxel():
    uv, a, b = _affine_case((64, 64), (0.03, 0.035), (1.1,), (-1.0, -0.2))
    grid = np.indices((64, 64))
    mask = ((grid[0] - 31.7) ** 2 + (grid[1] - 30.2) ** 2) < 25**2
    truth = np.array([[20.3, 25.8], [40.6, 33.1], [31.25, 30.75]])
    out = extract_template_points(uv.astype(np.float16), mask, truth @ a.T + b)
    assert np.linalg.norm(out.positions - truth, axis=1).max() < 0.05  # float16 rounding of uv ~ 5e-4


def test_a_masked_out_decoy_is_never_returned():
    uv, a, b = _affine_case((40, 40), (0.05, 0.05), (0.2,), (-1.0, -1.0))
    truth = np.array([10.4, 12.6])
    target = a @ truth + b
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:22, 2:22] = True
    # A decoy outside the mask holds the target exactly (distance 0 beats the true, sub-voxel match).
    uv[:, 30:33, 30:33] = target[:, None, None]
    out = extract_template_points(uv, mask, target[None])
    assert np.linalg.norm(out.positions[0] - truth) < TOL_VOXELS
    assert out.distance[0] > 0
    assert extract_template_points(uv, np.ones_like(mask), target[None]).distance[0] == 0  # the decoy is real


@pytest.mark.parametrize("refine", [True, False])
def test_positions_always_round_into_the_mask(refine):
    """Targets all over uv space (outside the structure's range too): every position rounds to a mask
    voxel, never into the hole or beyond the border."""
    uv, a, b = _affine_case((50, 50), (0.04, 0.04), (0.0,), (-1.0, -1.0))
    grid = np.indices((50, 50))
    ring = (np.hypot(grid[0] - 25, grid[1] - 25) < 20) & (np.hypot(grid[0] - 25, grid[1] - 25) > 8)
    targets = np.random.default_rng(0).uniform(-1.5, 1.5, (300, 2))
    out = extract_template_points(uv, ring, targets, refine=refine)
    assert out.found.all()
    rounded = np.rint(out.positions).astype(int)
    assert ((rounded >= 0) & (rounded < 50)).all()
    assert ring[tuple(rounded.T)].all()


def test_empty_mask_nan_targets_and_nan_uv():
    uv, a, b = _affine_case((30, 30), (0.06, 0.06), (0.4,), (-0.9, -0.9))
    targets = np.array([[0.1, 0.2], [np.nan, 0.0], [0.3, -0.1]])
    empty = extract_template_points(uv, np.zeros((30, 30), dtype=bool), targets)
    assert not empty.found.any() and np.isnan(empty.positions).all() and np.isnan(empty.distance).all()
    out = extract_template_points(uv, np.ones((30, 30), dtype=bool), targets)
    assert out.found.tolist() == [True, False, True]
    assert np.isnan(out.positions[1]).all() and np.isfinite(out.positions[[0, 2]]).all()
    # Non-finite predicted uv values are never matched; a map that is all NaN finds nothing.
    holed = uv.copy()
    holed[:, 10:20, 10:20] = np.nan
    in_hole = a @ [14.3, 15.6] + b  # the true position is in the NaN hole
    got = extract_template_points(holed, np.ones((30, 30), dtype=bool), in_hole[None])
    rounded = np.rint(got.positions[0]).astype(int)
    assert got.found[0] and np.isfinite(holed[(slice(None), *rounded)]).all()
    assert not extract_template_points(np.full_like(uv, np.nan), np.ones((30, 30), dtype=bool), targets).found.any()


@pytest.mark.parametrize("temperature", [0.0, 1e-9])
def test_zero_temperature_is_the_nearest_voxel(temperature):
    rng = np.random.default_rng(5)
    uv = rng.uniform(-1, 1, (2, 20, 20))  # no structure at all: the search alone decides
    mask = rng.random((20, 20)) < 0.6
    for target in rng.uniform(-1, 1, (20, 2)):
        got = extract_template_points(uv, mask, target[None], temperature=temperature, refine=False)
        nearest, d = _brute_nearest(uv, mask, target, 1)
        np.testing.assert_array_equal(got.positions[0], nearest[0])
        assert got.distance[0] == pytest.approx(d[0])


@pytest.mark.parametrize("k, temperature", [(1, 5.0), (5, 0.03), (5, 0.3), (8, 1e6)])
def test_softmin_weights_are_softmax_of_minus_distance_over_temperature(k, temperature):
    rng = np.random.default_rng(7)
    uv = rng.uniform(-1, 1, (3, 9, 9, 9))
    mask = rng.random((9, 9, 9)) < 0.5
    for target in rng.uniform(-0.8, 0.8, (10, 3)):
        got = extract_template_points(uv, mask, target[None], k=k, temperature=temperature, refine=False)
        pts, d = _brute_nearest(uv, mask, target, k)
        w = np.exp(-d / temperature) / np.exp(-d / temperature).sum()  # seed Eq. 3, scaled
        expected = w @ pts
        if not mask[tuple(np.rint(expected).astype(int))]:
            expected = pts[0]  # the documented guard: a softmin between voxels of a gap -> the nearest
        np.testing.assert_allclose(got.positions[0], expected, atol=1e-9)
        if temperature > 1e5:  # a hot softmin is the plain mean of the K nearest
            assert np.allclose(w, 1.0 / k)


def test_fewer_voxels_than_k_and_a_line_mask_fall_back_to_the_softmin():
    uv, a, b = _affine_case((30, 30), (0.06, 0.05), (0.3,), (-0.9, -0.7))
    few = np.zeros((30, 30), dtype=bool)
    few[5, 5] = few[5, 6] = True
    out = extract_template_points(uv, few, (a @ [5.0, 5.5] + b)[None], k=5)
    assert out.found[0] and 5 <= out.positions[0, 1] <= 6 and out.positions[0, 0] == 5
    line = np.zeros((30, 30), dtype=bool)
    line[:, 12] = True  # one voxel wide: every block is collinear, the affine fit is singular
    targets = np.stack([a @ [r, 12.3] + b for r in (4.2, 15.7, 22.5)])
    got = extract_template_points(uv, line, targets)
    assert np.isfinite(got.positions).all() and np.allclose(got.positions[:, 1], 12.0)


def test_memory_is_not_a_dense_points_by_voxels_matrix():
    uv, a, b = _affine_case((160, 160), (0.012, 0.012), (0.3,), (-1.0, -1.0))
    mask = np.ones((160, 160), dtype=bool)  # N = 25600 voxels
    targets = np.random.default_rng(1).uniform(-0.6, 0.6, (4000, 2))  # a dense P x N float64: 780 MiB
    tracemalloc.start()
    extract_template_points(uv, mask, targets)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20


def test_bad_shapes_and_parameters_are_refused():
    uv = np.zeros((2, 8, 8))
    mask = np.ones((8, 8), dtype=bool)
    with pytest.raises(ValueError):
        extract_template_points(uv, np.ones((8, 9), dtype=bool), np.zeros((1, 2)))
    with pytest.raises(ValueError):
        extract_template_points(uv, mask, np.zeros((1, 3)))
    with pytest.raises(ValueError):
        extract_template_points(np.zeros((3, 8, 8)), mask, np.zeros((1, 3)))
    with pytest.raises(ValueError):
        extract_template_points(uv, mask, np.zeros((1, 2)), k=0)
    with pytest.raises(ValueError):
        extract_template_points(uv, mask, np.zeros((1, 2)), temperature=-1.0)


def test_confidence_anchors():
    half = np.array([10.0, 40.0])  # geometric mean 20 mm per uv unit
    sigma = 2.0
    assert uv_confidence(np.array([0.0]), half, sigma)[0] == 1.0
    # 0.1 is reached at sigma * sqrt(2 ln 10) = 4.292 mm, i.e. 0.2146 uv here.
    d_uv = sigma * np.sqrt(2 * np.log(10)) / 20.0
    assert uv_confidence(np.array([d_uv]), half, sigma)[0] == pytest.approx(0.1)
    # 1 mm off: the height of a sigma-2 Gaussian at 1 mm.
    assert uv_confidence(np.array([0.05]), half, sigma)[0] == pytest.approx(np.exp(-1 / 8))
    conf = uv_confidence(np.array([0.0, 0.05, 0.1, 0.3, np.nan]), half, sigma)
    assert (np.diff(conf[:4]) < 0).all() and conf[4] == 0.0
    # 3D: the geometric mean of (5, 10, 20) is 10.
    assert uv_confidence(np.array([0.1]), np.array([5.0, 10.0, 20.0]), 1.0)[0] == pytest.approx(np.exp(-0.5))
    with pytest.raises(ValueError):
        uv_confidence(np.array([0.1]), np.array([0.0, 1.0]), 1.0)
