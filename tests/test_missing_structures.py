"""Structure mode: a structure the predicted segmentation misses is found from its heatmap peaks (named by
the segmentation logits' choice among the absent structures), or its points are reported as missing."""
from __future__ import annotations

import numpy as np
import torch

from poi_nnunet.channels import ChannelLayout
from poi_nnunet.inference.decoding import decode_points
from poi_nnunet.inference.missing_structures import recover_missing_structures
from tests.test_confidence import PATCH, _crafted_predictor, _gaussians

AMPLITUDE = 10.0
SIGMA = 1.5
SHAPE = (1, 64, 64)
TRUTH = {(1, 1): (14.3, 12.6), (1, 2): (20.2, 21.8), (2, 1): (44.4, 40.7), (2, 2): (51.1, 49.35)}
LAYOUT = ChannelLayout("structure_with_neighbours", ((-1, 1), (-1, 2)), ("a", "b"), (1, 2, 3))


def _case(structure_two_height: float = 1.0):
    """Heatmaps drawing each POI on both structures (structure 2 at ``structure_two_height`` of the
    amplitude), a segmentation holding structure 1 only, and logits that prefer 2 over 3 around 2."""
    heat = torch.zeros(2, *SHAPE)
    for (structure, poi), yx in TRUTH.items():
        height = AMPLITUDE * (structure_two_height if structure == 2 else 1.0)
        heat[poi - 1, 0] += _gaussians(SHAPE[1:], [yx], height, SIGMA)
    seg = np.zeros(SHAPE, dtype=int)
    seg[0, 10:25, 9:25] = 1
    logits = torch.zeros(4, *SHAPE)
    logits[0] = 5.0  # background wins everywhere but structure 1: structure 2 is not segmented
    logits[1, 0, 10:25, 9:25] = 10.0
    logits[2, 0, 38:56, 36:54] = 3.0  # the network's second choice around structure 2
    logits[3, 0, 30:60, 30:60] = 2.0
    return heat, seg, logits


def _recover(heat, seg, logits):
    options = dict(sigma_voxels=(SIGMA, SIGMA), min_confidence=0.1, support_sigmas=3.0, same_peak_sigmas=1.0)
    points = decode_points(heat, LAYOUT, AMPLITUDE, segmentation=seg, **options)
    return points, recover_missing_structures(points, heat, logits, seg, LAYOUT, amplitude=AMPLITUDE, **options)


def _keys(points):
    return sorted(zip(points.structures.tolist(), points.pois.tolist()))


def test_a_structure_the_segmentation_misses_is_decoded_around_its_heatmap_peaks() -> None:
    alone, points = _recover(*_case())
    assert _keys(alone) == [(1, 1), (1, 2)]  # decoding in the segmentation alone loses structure 2
    assert _keys(points) == sorted(TRUTH)
    for s, p, pos in zip(points.structures, points.pois, points.positions):
        np.testing.assert_allclose(pos, (0.0, *TRUTH[(int(s), int(p))]), atol=0.01)
    assert sorted(points.unbounded) == [(2, 1), (2, 2)]  # reported as decoded without their structure
    assert {(d.structure, d.poi): d.reason for d in points.dropped} == {
        (3, 1): "structure_not_segmented", (3, 2): "structure_not_segmented"}


def test_without_a_clear_peak_outside_the_segmented_structures_the_points_are_reported_missing() -> None:
    # structure 2's peaks at 30 % of structure 1's: weaker than half of the channel's best, not a structure
    alone, points = _recover(*_case(structure_two_height=0.3))
    assert _keys(points) == [(1, 1), (1, 2)] and not points.unbounded
    assert {(d.structure, d.poi): d.reason for d in points.dropped} == {
        (s, p): "structure_not_segmented" for s in (2, 3) for p in (1, 2)}


def test_coarse_refine_crops_a_missed_structure_around_its_peaks() -> None:
    heat, seg, logits = _case()
    heat3d, seg3d, logits3d = (torch.cat([heat] * 3, 1), np.concatenate([seg] * 3), torch.cat([logits] * 3, 1))
    predictor = _crafted_predictor(_gaussians(PATCH, [[9.5, 9.5, 9.5]], 20.0)[None].repeat(2, 1, 1, 1), layers=(1, 2, 3))
    recovered = predictor.missing_structure_peaks(heat3d, logits3d, seg3d)
    assert sorted(recovered) == [2]
    crops = predictor.structure_crops(seg3d.shape, seg3d, recovered)
    centre = {label: np.add(box.start, np.array(PATCH) / 2) for label, _, box in crops}
    peaks = np.array([TRUTH[(2, 1)], TRUTH[(2, 2)]])
    assert np.all(np.abs(centre[2][1:] - np.round(peaks).mean(0)) <= 1.0)  # centred on structure 2's peaks
    points = predictor.predict_points(torch.zeros(1, *seg3d.shape), seg3d, recovered)
    assert _keys(points) == [(1, 100), (1, 101), (2, 100), (2, 101)]
    assert sorted(points.unbounded) == [(2, 100), (2, 101)]
    assert {d.structure for d in points.dropped} == {3}
