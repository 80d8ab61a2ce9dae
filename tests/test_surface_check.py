"""The planner's cleaning rule on augmented samples: a point the transform left off its structure's surface is
masked, every point the planner would keep is kept (hand-made label patches with known distances)."""
from __future__ import annotations

import numpy as np

from poi_nnunet.augmentation.surface_check import off_surface

SPACING = np.array([1.0, 1.0, 1.0])
FENCES = {1: 2.0, 2: 2.0}  # mm; the 1.1-voxel-diagonal floor is 1.9 mm at 1 mm voxels


def _box_patch() -> np.ndarray:
    """A 40^3 patch with structure 3 filling voxels 10..29 on every axis; structure 4 beside it."""
    label = np.zeros((40, 40, 40), dtype=np.int16)
    label[10:30, 10:30, 10:30] = 3
    label[10:30, 10:30, 30:36] = 4
    return label


def test_points_far_outside_or_deep_inside_are_off_their_surface() -> None:
    points = np.array([
        [20.0, 20.0, 10.2],   # on the surface (x face at 9.5)
        [20.0, 20.0, 6.0],    # 3.5 voxels outside the face: beyond the 2 mm fence even measured by a box
        [20.0, 20.0, 20.0],   # the centre, 10 voxels deep
        [20.0, 20.0, 28.0],   # beside structure 4: still at its own structure's surface
        [20.0, 20.0, 8.0],    # 1.5 voxels outside: within the fence, kept
    ])
    flagged = off_surface(points, [3] * 5, [1] * 5, _box_patch(), SPACING, FENCES, 1.1)
    assert flagged.tolist() == [False, True, True, False, False]


def test_a_point_just_inside_is_kept() -> None:
    """The planner measures to the structure's outermost voxel centres (here x = 10): a point 1.6 mm inside
    them (x = 11.6) is within the 2 mm fence, though the 2-voxel box around its voxel (x 10-14) is all
    structure; 2.6 mm inside (x = 12.6) it is beyond the fence and flagged."""
    points = np.array([[20.0, 20.0, 11.6], [20.0, 20.0, 12.6]])
    assert off_surface(points, [3, 3], [1, 1], _box_patch(), SPACING, FENCES, 1.1).tolist() == [False, True]


def test_what_is_never_judged() -> None:
    label = _box_patch()
    # the centre of structure 3 (10 voxels deep) for structure 0 (no mask) and for an id without a fence; a
    # point whose box the patch cuts; no point. The same centre with a fenced id is flagged (control).
    points = np.array([[20.0, 20.0, 20.0], [20.0, 20.0, 20.0], [1.0, 1.0, 1.0], [np.nan, np.nan, np.nan],
                       [20.0, 20.0, 20.0]])
    flagged = off_surface(points, [0, 3, 3, 3, 3], [1, 9, 1, 1, 1], label, SPACING, FENCES, 1.1)
    assert flagged.tolist() == [False, False, False, False, True]


def test_the_fence_is_in_mm_on_an_anisotropic_grid() -> None:
    """4 mm slices along axis 0: the floor is 1.1 voxel diagonals (4.67 mm, above the 2 mm fence), a box of two
    slices either side. A point 1.5 slices (6 mm) beyond the z face has the face in its box and is kept (the box
    judges leniently); 2.5 slices (10 mm) out it is flagged. With 1 mm slices the same 10 mm would be 10 voxels."""
    label = _box_patch()
    spacing = np.array([4.0, 1.0, 1.0])
    points = np.array([[8.0, 20.0, 20.0], [7.0, 20.0, 20.0]])  # the z face is at 9.5
    flagged = off_surface(points, [3, 3], [1, 1], label, spacing, FENCES, 1.1)
    assert flagged.tolist() == [False, True]
