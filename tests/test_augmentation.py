"""Points move exactly as the augmented image does: a bright dot drawn at each POI ends up on its point."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch

from poi_nnunet.augmentation import PointMirrorTransform, PointSpatialTransform, mirror_slot_permutation
from poi_nnunet.augmentation.spatial import check_against_grid, sampling_from_parameters
from poi_nnunet.geometry import PatchSampling

# (dim, sample edge, patch edge): a sample larger than its patch, as nnU-Net's loader crops it
SIZES = {2: (80, 64), 3: (40, 32)}
DOT_SIGMA = 1.2


def dot_image(shape: Sequence[int], points: np.ndarray, sigma: float = DOT_SIGMA) -> torch.Tensor:
    """One channel per point, each a Gaussian dot centred (sub-voxel) on its point."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    out = np.zeros((len(points), *shape), dtype=np.float32)
    for k, p in enumerate(points):
        out[k] = np.exp(-sum((g - c) ** 2 for g, c in zip(grids, p)) / (2 * sigma**2))
    return torch.from_numpy(out)


def centroids(image: torch.Tensor) -> np.ndarray:
    """Intensity-weighted centre of every channel, array order."""
    arr = image.numpy().astype(np.float64)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in arr.shape[1:]], indexing="ij")
    mass = arr.reshape(len(arr), -1).sum(1)
    return np.stack([(arr * g).reshape(len(arr), -1).sum(1) / mass for g in grids], axis=1)


def central_points(dim: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Points near the sample centre, so that their dots stay whole inside the patch."""
    sample, patch = SIZES[dim]
    return sample / 2 + rng.uniform(-0.18 * patch, 0.18 * patch, size=(n, dim))


def spatial(dim: int, **kwargs) -> PointSpatialTransform:
    sample, patch = SIZES[dim]
    kwargs.setdefault("patch_center_dist_from_border", patch // 2)
    kwargs.setdefault("random_crop", False)
    return PointSpatialTransform((patch,) * dim, **kwargs)


AFFINE = dict(p_rotation=1, rotation=(-np.pi / 6, np.pi / 6), p_scaling=1, scaling=(0.7, 1.4))
ELASTIC = dict(p_elastic_deform=1, elastic_deform_scale=(0.25, 0.3), elastic_deform_magnitude=(3.0, 4.0))
CASES = {
    "crop": dict(random_crop=True),
    "rotation_scaling": AFFINE,
    "elastic": ELASTIC,
    "rotation_scaling_elastic": {**AFFINE, **ELASTIC},
    "align_corners": {**AFFINE, "align_corners": True},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dim", [2, 3])
def test_dot_centre_follows_point(dim: int, case: str) -> None:
    sample, _ = SIZES[dim]
    for seed in range(3):
        np.random.seed(seed)
        torch.manual_seed(seed)
        points = central_points(dim, 3, np.random.default_rng(seed))
        out = spatial(dim, **CASES[case])(image=dot_image((sample,) * dim, points), keypoints=torch.tensor(points))
        assert out["keypoints_valid"].all()
        error = np.abs(centroids(out["image"]) - out["keypoints"].numpy()).max()
        assert error < 0.5, f"seed {seed}: dot centre is {error:.3f} voxels from the moved point"


@pytest.mark.parametrize("dim", [2, 3])
def test_elastic_inversion_is_needed_for_the_dots(dim: int) -> None:
    """The elastic test has teeth: inverting only the affine part misses the dots."""
    sample, patch = SIZES[dim]
    np.random.seed(0)
    torch.manual_seed(0)
    points = central_points(dim, 3, np.random.default_rng(0))
    image = dot_image((sample,) * dim, points)
    tr = spatial(dim, **AFFINE, **ELASTIC)
    params = tr.get_parameters(image=image)
    out = tr.apply({"image": image, "keypoints": torch.tensor(points)}, **params)
    full = sampling_from_parameters(params, tr.patch_size, (sample,) * dim, True)
    affine_only, _ = PatchSampling(full.patch_size, full.linear, full.offset).sample_to_patch(points)
    found = centroids(out["image"])
    assert np.abs(found - out["keypoints"].numpy()).max() < 0.5
    assert np.abs(found - affine_only).max() > 1.0


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(
    "settings",
    [
        {},  # no augmentation: the crop path
        dict(p_rotation=1, rotation=0.0, p_scaling=1, scaling=1.0),  # the grid path, identity grid
        dict(p_elastic_deform=1, elastic_deform_scale=0.2, elastic_deform_magnitude=0.0),
    ],
    ids=["crop", "identity_grid", "zero_elastic"],
)
def test_identity_parameters_leave_points_unchanged(dim: int, settings: dict) -> None:
    _, patch = SIZES[dim]
    points = np.random.default_rng(1).uniform(-0.5, patch - 0.5, size=(20, dim))
    image = torch.zeros((1,) + (patch,) * dim)
    out = spatial(dim, **settings)(image=image, keypoints=torch.tensor(points))
    np.testing.assert_allclose(out["keypoints"].numpy(), points, atol=1e-5, rtol=0)
    assert out["keypoints_valid"].all()
    assert out["keypoints"].dtype == torch.float64


@pytest.mark.parametrize("dim", [2, 3])
def test_points_leaving_the_patch_become_invalid_and_are_not_clamped(dim: int) -> None:
    sample, patch = SIZES[dim]
    start = sample // 2 - patch // 2  # first sample voxel of the centred crop
    along = np.array([start - 5.0, start - 0.6, start - 0.4, start + patch - 0.6, start + patch - 0.4, start + 10])
    points = np.full((len(along), dim), sample / 2)
    points[:, -1] = along
    out = spatial(dim)(image=torch.zeros((1,) + (sample,) * dim), keypoints=torch.tensor(points))
    assert out["keypoints_valid"].tolist() == [False, False, True, True, False, True]
    np.testing.assert_allclose(out["keypoints"].numpy()[:, -1], along - start)


def test_rotated_out_point_is_invalid_and_keeps_its_position() -> None:
    """A point that rotation carries outside the patch keeps its (outside) position."""
    sample, patch = SIZES[2]
    points = np.array([[sample / 2 + 0.45 * patch, sample / 2 + 0.45 * patch], [sample / 2, sample / 2]])
    tr = spatial(2, p_rotation=1, rotation=np.pi / 4)
    image = torch.zeros((1, sample, sample))
    params = tr.get_parameters(image=image)
    out = tr.apply({"image": image, "keypoints": torch.tensor(points)}, **params)
    moved = out["keypoints"].numpy()
    assert out["keypoints_valid"].tolist() == [False, True]
    assert moved[0].min() < -0.5 or moved[0].max() > patch - 0.5
    back = sampling_from_parameters(params, tr.patch_size, image.shape[1:], True).patch_to_sample(moved)
    np.testing.assert_allclose(back, points, atol=1e-6)


def test_missing_points_stay_invalid() -> None:
    sample, _ = SIZES[2]
    points = torch.tensor([[40.0, 40.0], [np.nan, np.nan], [41.0, 39.0]])
    valid = torch.tensor([True, True, False])
    out = spatial(2, **AFFINE)(image=torch.zeros((1, sample, sample)), keypoints=points, keypoints_valid=valid)
    assert out["keypoints_valid"].tolist() == [True, False, False]
    assert torch.isfinite(out["keypoints"][2]).all()


def test_grid_check_catches_a_map_that_disagrees_with_the_image() -> None:
    sample, patch = SIZES[2]
    tr = spatial(2, **AFFINE)
    np.random.seed(3)
    params = tr.get_parameters(image=torch.zeros((1, sample, sample)))
    right = sampling_from_parameters(params, tr.patch_size, (sample, sample), True)
    points = np.array([[10.0, 20.0], [30.5, 31.25]])
    check_against_grid(right, params["grid"].numpy(), (sample, sample), False, points)
    wrong = PatchSampling(right.patch_size, right.linear, right.offset + 0.5)
    with pytest.raises(RuntimeError, match="disagrees"):
        check_against_grid(wrong, params["grid"].numpy(), (sample, sample), False, points)


# ---------------------------------------------------------------------------------------------- mirroring

SLOTS = [(1, 10), (1, 11), (1, 12), (2, 10), (2, 11)]  # (structure, poi); 10 and 11 are left/right
PAIRS = [(10, 11)]


@pytest.mark.parametrize("dim", [2, 3])
def test_mirroring_moves_points_and_swaps_pairs_only_on_the_left_right_axis(dim: int) -> None:
    _, patch = SIZES[dim]
    left_right = dim - 1
    perm = mirror_slot_permutation(SLOTS, PAIRS)
    points = np.random.default_rng(4).uniform(6, patch - 6, size=(len(SLOTS), dim))
    valid = np.array([True, True, True, False, True])
    tr = PointMirrorTransform(tuple(range(dim)), swap_axes=(left_right,), slot_permutation=perm)
    for axes in ([], [0], [left_right], list(range(dim))):
        image = dot_image((patch,) * dim, points)
        out = tr.apply(
            {"image": image, "keypoints": torch.tensor(points), "keypoints_valid": torch.tensor(valid)}, axes=axes
        )
        # channel k is the dot of the POI that sat in slot k before mirroring
        source = perm if left_right in axes else np.arange(len(SLOTS))
        found = centroids(out["image"])
        np.testing.assert_allclose(out["keypoints"].numpy()[source], found, atol=0.05)
        assert out["keypoints_valid"].numpy()[source].tolist() == valid.tolist()
    assert perm.tolist() == [1, 0, 2, 4, 3]


def test_mirroring_without_pairs_only_flips() -> None:
    points = torch.tensor([[0.0, 3.0], [10.25, -0.5]])
    out = PointMirrorTransform((0, 1)).apply({"image": torch.zeros((1, 16, 8)), "keypoints": points}, axes=[0, 1])
    np.testing.assert_allclose(out["keypoints"].numpy(), [[15.0, 4.0], [4.75, 7.5]])


def test_slot_permutation_refuses_a_partner_without_a_slot() -> None:
    with pytest.raises(ValueError, match=r"\(2, 11\)"):
        mirror_slot_permutation([(1, 10), (1, 11), (2, 10)], PAIRS)
    with pytest.raises(ValueError, match="more than one"):
        mirror_slot_permutation(SLOTS, [(10, 11), (11, 12)])
    with pytest.raises(ValueError, match="pairs"):
        PointMirrorTransform((0,), swap_axes=(0,), slot_permutation=[1, 2, 0])


def test_left_and_right_structures_exchange_labels_and_points() -> None:
    """An X-ray's left lung (label 1, POIs 10/11) and right lung (label 2, POIs 20/21) swap on a left-right flip."""
    slots = [(1, 10), (1, 11), (2, 20), (2, 21), (3, 30)]
    perm = mirror_slot_permutation(slots, [(10, 20), (11, 21)], structure_mirror_pairs=[(1, 2)])
    assert perm.tolist() == [2, 3, 0, 1, 4]
    seg = torch.zeros((1, 8, 8), dtype=torch.int16)
    seg[0, :, :3] = 1
    seg[0, :, 5:] = 2
    seg[0, 0, 0] = -1  # nnU-Net's padding value must survive
    points = torch.tensor([[1.0, 1.0], [2.0, 1.0], [1.0, 6.0], [2.0, 6.0], [4.0, 4.0]])
    tr = PointMirrorTransform((0, 1), swap_axes=(1,), slot_permutation=perm, label_swaps=[(1, 2)])
    out = tr.apply({"image": torch.zeros((1, 8, 8)), "segmentation": seg, "keypoints": points}, axes=[1])
    flipped = out["segmentation"][0]
    # after flipping columns the left side holds what was right (label 2), which is now called left (label 1)
    assert flipped[:, :3].unique().tolist() == [1] and flipped[1:, 5:].unique().tolist() == [2]
    assert flipped[0, 7].item() == -1
    # slot (1, 10) now holds the flipped position of the old right-lung point (2, 20)
    np.testing.assert_allclose(out["keypoints"].numpy()[0], [1.0, 1.0])
    np.testing.assert_allclose(out["keypoints"].numpy()[4], [4.0, 3.0])
    # a flip of another axis changes no names
    out = tr.apply({"image": torch.zeros((1, 8, 8)), "segmentation": seg, "keypoints": points}, axes=[0])
    assert out["segmentation"][0, 7, 1].item() == 1 and out["segmentation"][0, 7, 6].item() == 2
