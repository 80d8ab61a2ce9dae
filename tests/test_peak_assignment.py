"""Several peaks per heatmap channel (issue 10): candidate peaks, channels assigned jointly to distinct peaks,
confidence lowered by ambiguity, whole-image channels bounded to their structure, and every point that is
not written reported with its reason. Hand-made heatmaps, hand-computed positions and confidences."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch

from poi_nnunet.channels import ChannelLayout
from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
from poi_nnunet.heatmaps import decode_heatmaps, render_gaussian_heatmaps
from poi_nnunet.inference.decoding import (
    AMBIGUOUS,
    BELOW_MIN_CONFIDENCE,
    NO_PEAK_IN_STRUCTURE,
    OUTSIDE_IMAGE,
    PEAK_TAKEN,
    STRUCTURE_NOT_SEGMENTED,
    DecodedPoints,
    DroppedPoint,
    decode_points,
    decode_structures,
    decode_whole_image,
)

AMPLITUDE = 10.0
SIGMA = 1.5
SHAPE_2D = (1, 48, 48)  # a 2D image: nnU-Net's (1, y, x)
# Fitted sub-voxel positions of a noise-free float32 Gaussian: a few thousandths of a voxel off.
TOL_VOXELS = 0.01
TOL_CONFIDENCE = 2e-3

Peak = Tuple[Tuple[float, float], float]  # ((y, x), height)


def _maps(channels: Sequence[Sequence[Peak]], shape=SHAPE_2D, sigma: float = SIGMA) -> torch.Tensor:
    """``(C, 1, y, x)`` float16 heatmaps (as the predictor has them): channel ``c`` is the sum of its peaks."""
    out = torch.zeros(len(channels), *shape[1:], dtype=torch.float64)
    for c, peaks in enumerate(channels):
        for yx, height in peaks:
            out[c] += render_gaussian_heatmaps(torch.tensor([[yx]], dtype=torch.float64),
                                               torch.ones(1, 1, dtype=torch.bool), shape[1:], sigma, height)[0, 0]
    return out[:, None].half()


def _layout(keys: Sequence[Tuple[int, int]], labels=(1, 2)) -> ChannelLayout:
    channels = [{"structure": s, "poi": p, "name": f"p{p}"} for s, p in keys]
    return ChannelLayout.from_channels("whole_image", channels,
                                       {"labels": {"background": 0, **{f"s{v}": v for v in labels}}})


def _by_key(points: DecodedPoints) -> Dict[Tuple[int, int], Tuple[np.ndarray, float]]:
    return {(int(s), int(p)): (pos, float(c))
            for s, p, pos, c in zip(points.structures, points.pois, points.positions, points.confidence)}


def _reasons(points: DecodedPoints) -> Dict[Tuple[int, int], str]:
    return {(d.structure, d.poi): d.reason for d in points.dropped}


def _near(position: np.ndarray, yx: Tuple[float, float]) -> bool:
    return bool(np.max(np.abs(np.asarray(position) - (0.0, *yx))) < TOL_VOXELS)


# ----------------------------------------------------------------------------------------------- joint assignment
def test_two_channels_with_the_same_two_peaks_get_one_each() -> None:
    """Both channels see the same two equal peaks: one each, and the identity is a coin flip (confidence 0)."""
    p, q = (12.3, 14.6), (33.7, 30.2)
    maps = _maps([[(p, 10.0), (q, 10.0)]] * 2)
    layout = _layout([(0, 1), (0, 2)])
    everything = decode_whole_image(maps, layout, AMPLITUDE, min_confidence=0.0)
    positions = [pos for pos, _ in _by_key(everything).values()]
    assert len(positions) == 2
    assert {_near(positions[0], p), _near(positions[0], q)} == {True, False}
    assert _near(positions[1], q if _near(positions[0], p) else p)
    np.testing.assert_allclose(everything.confidence, 0.0)  # a tie: the margin is 0
    default = decode_whole_image(maps, layout, AMPLITUDE)
    assert len(default) == 0 and _reasons(default) == {(0, 1): AMBIGUOUS, (0, 2): AMBIGUOUS}


CORNERS = {1: (8.2, 9.6), 2: (8.6, 38.3), 3: (39.1, 38.8), 4: (38.4, 8.9)}


def test_four_channels_highest_on_one_corner_get_four_corners() -> None:
    """All four channels peak highest (10) on corner 1; channels 2-4 also have a lower peak (6) on their own
    corner. The joint assignment gives 1 -> corner 1 and k -> corner k; by hand, the best total is 10 + 3 * 6 = 28
    and without a channel's peak it is 22 (the next best channel takes it or nobody does), so every margin is 6:
    channel 1 keeps 10 / 10 (6 >= half of 10), channels 2-4 get 6 / 10 times 1 (6 >= half of 6)."""
    maps = _maps([[(CORNERS[1], 10.0)]] + [[(CORNERS[1], 10.0), (CORNERS[k], 6.0)] for k in (2, 3, 4)])
    layout = _layout([(0, k) for k in (1, 2, 3, 4)])
    found = _by_key(decode_whole_image(maps, layout, AMPLITUDE))
    assert sorted(found) == [(0, 1), (0, 2), (0, 3), (0, 4)]
    for k, yx in CORNERS.items():
        position, confidence = found[(0, k)]
        assert _near(position, yx), (k, position, yx)
        assert confidence == pytest.approx(1.0 if k == 1 else 0.6, abs=TOL_CONFIDENCE)


def test_twenty_channels_highest_on_one_spot_get_their_own_spots() -> None:
    """The four-corner case with 20 channels (more than EXACT_MARGIN_CHANNELS, so the margins come from the
    moves of at most two channels): channel 1 keeps the shared spot (10 / 10), channel k its own spot (6 / 10).
    By hand, as for four corners: every margin is 6 (k leaves its spot: it goes to none, or takes the shared
    spot and channel 1 goes to none; 1 leaves the shared spot: the best other channel moves in, gaining 4)."""
    from poi_nnunet.inference import peak_assignment

    assert 20 > peak_assignment.EXACT_MARGIN_CHANNELS
    shape = (1, 64, 64)
    spots = [(7.3 + 12.1 * (i // 5), 8.6 + 12.2 * (i % 5)) for i in range(20)]
    shared = spots[0]
    maps = _maps([[(shared, 10.0)]] + [[(shared, 10.0), (spots[k], 6.0)] for k in range(1, 20)], shape=shape)
    found = _by_key(decode_whole_image(maps, _layout([(0, k + 1) for k in range(20)]), AMPLITUDE))
    assert sorted(found) == [(0, k + 1) for k in range(20)]
    for k in range(20):
        position, confidence = found[(0, k + 1)]
        assert _near(position, spots[k]), (k, position, spots[k])
        assert confidence == pytest.approx(1.0 if k == 0 else 0.6, abs=TOL_CONFIDENCE)


def test_a_lower_peak_next_to_a_higher_one_is_fitted_without_its_flank() -> None:
    """Channel 2 moves to its lower peak, 4 sigma from the shared higher one: the window voxels nearer to the
    higher peak are left out of the fit, so the position is sub-voxel right (with them: over 0.1 voxel off)."""
    shared, lower = (20.0, 20.0), (20.0 + 4 * SIGMA * 0.6, 20.0 + 4 * SIGMA * 0.8)
    maps = _maps([[(shared, 10.0)], [(shared, 10.0), (lower, 6.0)]])
    found = _by_key(decode_whole_image(maps, _layout([(0, 1), (0, 2)]), AMPLITUDE))
    assert _near(found[(0, 1)][0], shared)
    assert np.max(np.abs(found[(0, 2)][0] - (0.0, *lower))) < 0.05, found[(0, 2)][0]


def test_a_channel_alone_on_its_peak_decodes_as_the_argmax_fit_did() -> None:
    """No conflict: bit for bit what decode_heatmaps gives (the decoder before joint assignment), also with
    a second peak below half the first; a second peak at 3/4 of the first keeps the position and halves the
    confidence ((1 - 3/4) / (1 - 1/2))."""
    clean, weak_second, strong_second = (20.4, 17.8), (9.0, 40.0), (40.0, 40.0)
    maps = _maps([[(clean, 10.0)],
                  [((30.6, 8.3), 9.0), (weak_second, 4.0)],
                  [((14.0, 30.0), 8.0), (strong_second, 6.0)]])
    layout = _layout([(0, 1), (0, 2), (0, 3)])
    decoded = decode_whole_image(maps, layout, AMPLITUDE)
    coords, confidence = decode_heatmaps(maps[None, :, 0].float(), amplitude=AMPLITUDE)
    expected = np.concatenate([np.zeros((3, 1)), coords[0].double().numpy()], axis=1)
    assert decoded.pois.tolist() == [1, 2, 3]
    assert np.array_equal(decoded.positions, expected)
    assert np.array_equal(decoded.confidence[:2], confidence[0, :2].double().numpy())
    assert decoded.confidence[2] == pytest.approx(0.5 * float(confidence[0, 2]), abs=TOL_CONFIDENCE)
    assert _near(decoded.positions[0], clean) and _near(decoded.positions[2], (14.0, 30.0))


def test_a_channel_without_a_peak_of_its_own_is_dropped_as_peak_taken() -> None:
    """Channel 1 has the peak at 10, channel 2 the same peak at 8 and nothing else: channel 1 keeps it (margin
    10 - 8 = 2 of 10: factor 2 / 5), channel 2 has no distinct peak left."""
    spot = (24.2, 25.7)
    maps = _maps([[(spot, 10.0)], [(spot, 8.0)]])
    decoded = decode_whole_image(maps, _layout([(0, 1), (0, 2)]), AMPLITUDE)
    found = _by_key(decoded)
    assert list(found) == [(0, 1)] and _near(found[(0, 1)][0], spot)
    assert found[(0, 1)][1] == pytest.approx(0.4, abs=TOL_CONFIDENCE)
    assert _reasons(decoded) == {(0, 2): PEAK_TAKEN}


def test_channels_of_different_structures_do_not_compete() -> None:
    """Two POIs of different structures at one place (neighbouring structures touch) are both kept."""
    spot = (24.2, 25.7)
    maps = _maps([[(spot, 10.0)], [(spot, 10.0)]])
    decoded = decode_whole_image(maps, _layout([(1, 1), (2, 1)]), AMPLITUDE)
    assert decoded.structures.tolist() == [1, 2] and not decoded.dropped
    np.testing.assert_allclose(decoded.confidence, 1.0, atol=TOL_CONFIDENCE)


# ----------------------------------------------------------------------------------------------- structure bounds
def _segmentation() -> np.ndarray:
    seg = np.zeros(SHAPE_2D, dtype=np.int16)
    seg[0, 5:15, 5:15] = 1
    seg[0, 30:42, 30:42] = 2
    return seg


def test_whole_image_channel_looks_inside_its_structure() -> None:
    """Channel (1, 1) peaks higher on structure 2 (10) than inside structure 1's grown box (7): with the
    segmentation it takes its peak inside the box (structure 1: voxels 5..14, margin ceil(3 * 1.5 + 2) = 7)."""
    own, elsewhere = (9.4, 11.2), (36.3, 35.7)
    maps = _maps([[(own, 7.0), (elsewhere, 10.0)], [((33.2, 38.1), 10.0)]])
    layout = _layout([(1, 1), (2, 5)])
    bounded = _by_key(decode_whole_image(maps, layout, AMPLITUDE, segmentation=_segmentation(),
                                         sigma_voxels=(SIGMA, SIGMA)))
    assert _near(bounded[(1, 1)][0], own)
    assert bounded[(1, 1)][1] == pytest.approx(0.7, abs=TOL_CONFIDENCE)
    assert _near(bounded[(2, 5)][0], (33.2, 38.1))
    unbounded = _by_key(decode_whole_image(maps, layout, AMPLITUDE))
    assert _near(unbounded[(1, 1)][0], elsewhere)  # what the box prevents
    # decode_points passes the segmentation on in whole-image mode too
    through = _by_key(decode_points(maps, layout, AMPLITUDE, segmentation=_segmentation(), sigma_voxels=(SIGMA, SIGMA)))
    assert _near(through[(1, 1)][0], own)


def test_channels_of_a_structure_missing_from_the_segmentation_are_decoded_unbounded_and_marked() -> None:
    maps = _maps([[((20.3, 22.6), 10.0)], [((10.2, 9.9), 10.0)], [((40.0, 12.0), 10.0)]])
    layout = _layout([(3, 1), (1, 2), (0, 3)], labels=(1, 2, 3))
    decoded = decode_whole_image(maps, layout, AMPLITUDE, segmentation=_segmentation(), sigma_voxels=(SIGMA, SIGMA))
    found = _by_key(decoded)
    assert sorted(found) == [(0, 3), (1, 2), (3, 1)] and _near(found[(3, 1)][0], (20.3, 22.6))
    assert decoded.unbounded == [(3, 1)]  # structure 0 is "no structure", not an unbounded one
    assert "1 channel(s) decoded over the whole image" in decoded.report()


def test_a_channel_without_a_peak_in_its_box_is_dropped() -> None:
    """Channel (1, 1)'s only peak lies on structure 2, and its map falls steadily towards structure 1's box,
    so nothing there is a local maximum."""
    y, x = np.meshgrid(np.arange(48.0), np.arange(48.0), indexing="ij")
    ramp = torch.from_numpy(0.01 * (y + x))[None, None].half()
    maps = _maps([[((36.0, 36.0), 10.0)]]) + ramp
    decoded = decode_whole_image(maps, _layout([(1, 1)]), AMPLITUDE, segmentation=_segmentation(),
                                 sigma_voxels=(SIGMA, SIGMA))
    assert len(decoded) == 0 and _reasons(decoded) == {(1, 1): NO_PEAK_IN_STRUCTURE}


def test_whole_image_segmentation_needs_sigma() -> None:
    with pytest.raises(ValueError, match="sigma"):
        decode_whole_image(_maps([[((9.0, 9.0), 10.0)]]), _layout([(1, 1)]), AMPLITUDE, segmentation=_segmentation())


# ----------------------------------------------------------------------------------------------- structure mode
def _structure_layout(pois, labels=(1, 2, 3)) -> ChannelLayout:
    channels = [{"structure": None, "poi": p, "name": f"p{p}"} for p in pois]
    return ChannelLayout.from_channels("structure_with_neighbours", channels,
                                       {"labels": {"background": 0, **{f"s{v}": v for v in labels}}})


def test_structure_mode_assigns_channels_within_a_box_and_ignores_neighbour_peaks() -> None:
    """In structure 1's box both channels peak highest (10) at ``a``; channel 102 also has a peak (8) at ``b``.
    Channel 101's map also holds a neighbour's peak of the same POI inside the box (7; every structure in view
    is drawn in every channel). Best total: 101 -> a, 102 -> b, 18 (against 7 + 10 = 17). In structure mode a
    channel's other peaks in the box are the neighbours', no alternative: without its peak, 101 would have
    none and 102 would take a (10), a margin of 8 >= half of 10, confidence 1 (whole-image rules would count
    the neighbour: margin 18 - 17 = 1, factor 0.2). 102: margin 18 - 10 = 8 of 8, confidence 8 / 10."""
    a, b, neighbour = (7.1, 6.7), (15.5, 14.2), (18.6, 5.3)
    maps = _maps([[(a, 10.0), (neighbour, 7.0)], [(a, 10.0), (b, 8.0)]])
    seg = _segmentation()
    decoded = decode_structures(maps, seg, _structure_layout([101, 102]), (SIGMA, SIGMA), AMPLITUDE)
    found = _by_key(decoded)
    assert _near(found[(1, 101)][0], a) and _near(found[(1, 102)][0], b)
    assert found[(1, 101)][1] == pytest.approx(1.0, abs=TOL_CONFIDENCE)
    assert found[(1, 102)][1] == pytest.approx(0.8, abs=TOL_CONFIDENCE)
    assert _reasons(decoded) == {(3, 101): STRUCTURE_NOT_SEGMENTED, (3, 102): STRUCTURE_NOT_SEGMENTED,
                                 (2, 101): BELOW_MIN_CONFIDENCE, (2, 102): BELOW_MIN_CONFIDENCE}


# ----------------------------------------------------------------------------------------------- reporting
def _space() -> PreprocessedSpace:
    raw = ImageGeometry(origin=(0.0, 0.0), spacing=(1.0, 1.0), direction=np.eye(2), size=(48, 48))
    return PreprocessedSpace(raw, (0, 1, 2), ((0, 1), (0, 48), (0, 48)), SHAPE_2D, SHAPE_2D)


def test_every_point_not_written_is_reported_with_its_reason() -> None:
    maps = _maps([[((20.3, 22.6), 10.0)], [((10.2, 9.9), 0.5)], [((30.0, 30.0), 10.0)]])
    decoded = decode_whole_image(maps, _layout([(0, 1), (0, 2), (0, 3)]), AMPLITUDE)
    assert decoded.dropped == [DroppedPoint(0, 2, BELOW_MIN_CONFIDENCE)]
    decoded.positions[decoded.pois == 3] = (0.0, -5.0, 30.0)  # as a fit that ran off the image
    space = _space()
    assert decoded.outside_image(space) == [DroppedPoint(0, 3, OUTSIDE_IMAGE)]
    assert [p.poi for p in decoded.to_world(space)] == [1]
    assert decoded.report(space) == "2 point(s) not written (1 below min confidence, 1 outside image)"
    assert DecodedPoints.concatenate([decoded.select(np.zeros(len(decoded), bool), "x"), decoded.select([])]).dropped \
        == decoded.dropped + [DroppedPoint(0, 1, "x"), DroppedPoint(0, 3, "x")] + decoded.dropped


def test_nothing_dropped_means_no_report() -> None:
    decoded = decode_whole_image(_maps([[((20.3, 22.6), 10.0)]]), _layout([(0, 1)]), AMPLITUDE)
    assert decoded.report(_space()) == "" and not decoded.dropped


def test_poi_predict_prints_one_line_per_case_with_dropped_points(capsys) -> None:
    from poi_nnunet.inference.predictor import CasePrediction
    from poi_nnunet.inference.run import report_dropped

    maps = _maps([[((20.3, 22.6), 10.0)], [((10.2, 9.9), 0.5)]])
    points = decode_whole_image(maps, _layout([(0, 1), (0, 2)]), AMPLITUDE)
    report_dropped("case_7", CasePrediction(torch.zeros(1), maps, points), _space())
    assert capsys.readouterr().out == "case_7: 1 point(s) not written (1 below min confidence)\n"
    report_dropped("case_8", CasePrediction(torch.zeros(1), maps, points.select([0])), _space())
    assert "case_8" in capsys.readouterr().out  # a selection keeps what was dropped before it


# ----------------------------------------------------------------------------------------------- the predictor
def _bare_predictor(monkeypatch: pytest.MonkeyPatch, labels: Dict[str, int], keys, seg_logits: np.ndarray,
                    maps: torch.Tensor):
    """A PoiPredictor whose sliding window returns ``seg_logits`` and ``maps`` (no network, no plans on disk)."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from poi_nnunet.inference.predictor import PoiPredictor
    from poi_nnunet.plan import PoiPlan

    block = {"crop_mode": "whole_image", "crop_size_mm": [48.0, 48.0], "heatmap_sigma_mm": SIGMA,
             "heatmap_sigma_voxels": [SIGMA, SIGMA], "heatmap_amplitude": AMPLITUDE, "refine_patch_size": [16, 16],
             "poi_channels": [{"structure": s, "poi": p, "name": f"p{p}"} for s, p in keys]}
    predictor = PoiPredictor.__new__(PoiPredictor)
    predictor.min_confidence = 0.1
    predictor.poi_plan = PoiPlan.from_block(block)
    predictor.layout = ChannelLayout.from_plan(predictor.poi_plan, {"labels": labels})
    predictor.label_manager = LabelManager(labels, None)
    predictor.num_segmentation_outputs = len(labels)
    logits = torch.cat([torch.from_numpy(seg_logits).half(), maps])
    monkeypatch.setattr(predictor, "network_input_channels", lambda: None, raising=False)
    monkeypatch.setattr(predictor, "set_case_space", lambda space: None, raising=False)
    monkeypatch.setattr(predictor, "predict_logits_from_preprocessed_data", lambda data: logits, raising=False)
    return predictor


def test_predictor_bounds_whole_image_channels_by_its_own_segmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-image mode: the predictor computes its segmentation (the dataset has labels) and passes it on, so
    channel (1, 1) takes its peak inside structure 1 although its highest one lies on structure 2."""
    own, elsewhere = (9.4, 11.2), (36.3, 35.7)
    maps = _maps([[(own, 7.0), (elsewhere, 10.0)], [((33.2, 38.1), 10.0)]])
    seg = _segmentation()[0]
    seg_logits = np.stack([(seg == k).astype(np.float32) * 4 for k in range(3)])[:, None]
    labels = {"background": 0, "s1": 1, "s2": 2}
    predictor = _bare_predictor(monkeypatch, labels, [(1, 1), (2, 5)], seg_logits, maps)
    prediction = predictor.predict_case(np.zeros((1, *SHAPE_2D), np.float32), _space())
    assert (prediction.segmentation == _segmentation()).all()
    found = _by_key(prediction.points)
    assert _near(found[(1, 1)][0], own) and _near(found[(2, 5)][0], (33.2, 38.1))
    # a provided label map (--labels) wins over the predicted one: structure 1 moved onto the other peak
    moved = np.zeros(SHAPE_2D, dtype=np.int16)
    moved[0, 32:40, 32:40] = 1
    moved[0, 28:40, 36:44] = 2
    again = predictor.predict_case(np.zeros((1, *SHAPE_2D), np.float32), _space(), segmentation=moved)
    assert _near(_by_key(again.points)[(1, 1)][0], elsewhere)


def test_predictor_of_a_landmark_only_dataset_decodes_without_segmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = _maps([[((9.4, 11.2), 7.0), ((36.3, 35.7), 10.0)]])
    predictor = _bare_predictor(monkeypatch, {"background": 0}, [(0, 1)], np.zeros((1, *SHAPE_2D), np.float32), maps)
    prediction = predictor.predict_case(np.zeros((1, *SHAPE_2D), np.float32), _space())
    assert prediction.segmentation is None
    assert _near(_by_key(prediction.points)[(0, 1)][0], (36.3, 35.7))


def test_dense_landmarks_keep_their_own_peaks_under_the_plans_same_peak_radius() -> None:
    """Contour landmarks lie close (the X-ray phantom's closest are 0.85 sigma apart), and each channel
    also shows its neighbour's peak. With one sigma as the 'same peak' radius the two channels' maxima
    merged into one peak and both points were dropped (the demo lost ~10% of its points so); with the
    plan's radius, half the dataset's POI separation, each channel keeps its own peak."""
    from poi_nnunet.plan import PoiPlan

    a, b = (20.0, 20.0), (20.0, 20.0 + 2.0 * SIGMA)
    maps = _maps([[(a, AMPLITUDE), (b, 0.5 * AMPLITUDE)], [(b, AMPLITUDE), (a, 0.5 * AMPLITUDE)]])
    layout = _layout([(0, 1), (0, 2)])
    merged = decode_whole_image(maps, layout, AMPLITUDE, sigma_voxels=[SIGMA, SIGMA], same_peak_sigmas=1.0)
    assert len(merged) == 0 and set(_reasons(merged).values()) == {PEAK_TAKEN, AMBIGUOUS}
    plan = PoiPlan("whole_image", (48.0, 48.0), (SIGMA, SIGMA), AMPLITUDE, 3.0, (16, 16), (1.0, 2.0), (0.1, 0.2),
                   tuple({"structure": 0, "poi": p, "name": str(p)} for p in (1, 2)), separation_sigmas=1.7)
    assert plan.same_peak_sigmas(1.0) == pytest.approx(0.85)
    kept = _by_key(decode_whole_image(maps, layout, AMPLITUDE, sigma_voxels=[SIGMA, SIGMA],
                                      same_peak_sigmas=plan.same_peak_sigmas(1.0)))
    for key, own, other in (((0, 1), a, b), ((0, 2), b, a)):
        position = kept[key][0][1:]
        assert np.linalg.norm(position - own) < np.linalg.norm(position - other)


# ----------------------------------------------------------------------------------------------- shape prior
# Six landmarks of one structure (2D, 1 mm pixels): channels 1-4 clearly placed, channels 5 and 6 each
# seeing both of the last two places.
SHAPE = {1: (8.3, 9.1), 2: (9.2, 38.7), 3: (38.6, 39.4), 4: (39.3, 8.8), 5: (20.4, 24.1), 6: (29.7, 15.2)}


def _turn(degrees: float) -> np.ndarray:
    """``(2, 2)``: a turn by ``degrees`` in the (y, x) plane."""
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _prior(places: Dict[int, Tuple[float, float]] = SHAPE, spread: float = 1.5):
    """A shape prior whose mean is ``places`` scaled by 1.3 and moved, in the image's orientation (the
    decoder must fit it back onto the image by translation and scale): channel ``k - 1`` is POI ``k``."""
    from poi_nnunet.shape_prior import ShapePrior

    mean = 1.3 * np.array([places[k] for k in sorted(places)]) + (100.0, -40.0)
    return ShapePrior.from_block({"fit": "translation_scale", "spacing_mm": [1.0, 1.0], "groups": [
        {"structure": None, "channels": [k - 1 for k in sorted(places)], "mean_mm": mean.tolist(),
         "spread_mm": [spread] * len(places)}]})


def _pair_maps(own: float, other: float) -> torch.Tensor:
    """Channels 1-4 on their places (10); channels 5 and 6 at ``own`` on their own place and ``other`` on
    the other's."""
    clear = [[(SHAPE[k], 10.0)] for k in (1, 2, 3, 4)]
    return _maps(clear + [[(SHAPE[5], own), (SHAPE[6], other)], [(SHAPE[6], own), (SHAPE[5], other)]])


def test_a_shape_prior_flips_a_swapped_pair_back() -> None:
    """The heatmaps prefer the swap slightly (10 on the other's place, 9.6 on its own): alone they assign it
    with factor (20 - 19.2) / (0.5 * 10) = 0.16. The prior (the true shape, moved and scaled) puts
    5 and 6 back on their own places; the swap misplaces two points by 13 mm, 8.7 spreads, so the margin
    dwarfs log 2 and the confidence is the fitted height alone (9.6 / 10)."""
    layout = _layout([(0, k) for k in sorted(SHAPE)])
    maps = _pair_maps(own=9.6, other=10.0)
    alone = _by_key(decode_whole_image(maps, layout, AMPLITUDE, min_confidence=0.0))
    assert _near(alone[(0, 5)][0], SHAPE[6]) and _near(alone[(0, 6)][0], SHAPE[5])
    assert alone[(0, 5)][1] == pytest.approx(0.16, abs=TOL_CONFIDENCE)
    prior = _by_key(decode_whole_image(maps, layout, AMPLITUDE, min_confidence=0.0, shape_prior=_prior()))
    for k in SHAPE:
        assert _near(prior[(0, k)][0], SHAPE[k]), (k, prior[(0, k)][0])
    assert prior[(0, 5)][1] == pytest.approx(0.96, abs=TOL_CONFIDENCE)
    assert prior[(0, 6)][1] == pytest.approx(0.96, abs=TOL_CONFIDENCE)
    np.testing.assert_allclose([prior[(0, k)][1] for k in (1, 2, 3, 4)], 1.0, atol=TOL_CONFIDENCE)


def test_a_shape_prior_decides_a_tie_and_says_it_was_sure() -> None:
    """Identical double peaks: the heatmaps alone give a coin flip with confidence 0 (dropped as ambiguous
    at the default threshold); the prior assigns both right, with the fitted height as confidence."""
    layout = _layout([(0, k) for k in sorted(SHAPE)])
    maps = _pair_maps(own=10.0, other=10.0)
    alone = decode_whole_image(maps, layout, AMPLITUDE)
    assert _reasons(alone) == {(0, 5): AMBIGUOUS, (0, 6): AMBIGUOUS}
    prior = _by_key(decode_whole_image(maps, layout, AMPLITUDE, shape_prior=_prior()))
    assert sorted(prior) == [(0, k) for k in sorted(SHAPE)]
    for k in SHAPE:
        assert _near(prior[(0, k)][0], SHAPE[k]), k
        assert prior[(0, k)][1] == pytest.approx(1.0, abs=TOL_CONFIDENCE)


def test_a_wrong_prior_never_overrides_clear_peaks() -> None:
    """No conflict (every channel one clear peak), and a prior that puts POIs 5 and 6 on each other's places:
    the output is bit for bit the one without a prior."""
    layout = _layout([(0, k) for k in sorted(SHAPE)])
    maps = _maps([[(SHAPE[k], 10.0)] for k in sorted(SHAPE)])
    wrong = _prior({**SHAPE, 5: SHAPE[6], 6: SHAPE[5]})
    alone = decode_whole_image(maps, layout, AMPLITUDE)
    prior = decode_whole_image(maps, layout, AMPLITUDE, shape_prior=wrong)
    assert np.array_equal(alone.positions, prior.positions) and np.array_equal(alone.confidence, prior.confidence)


def test_a_prior_with_too_few_points_leaves_the_heatmap_decision() -> None:
    """A swapped pair and no other channel: two points (2D translation and scale take three degrees of
    freedom, the prior asks for three points): the swap stands as without a prior, bit for bit."""
    layout = _layout([(0, 5), (0, 6)])
    maps = _maps([[(SHAPE[5], 9.6), (SHAPE[6], 10.0)], [(SHAPE[6], 9.6), (SHAPE[5], 10.0)]])
    alone = decode_whole_image(maps, layout, AMPLITUDE, min_confidence=0.0)
    prior = decode_whole_image(maps, layout, AMPLITUDE, min_confidence=0.0,
                               shape_prior=_prior({1: SHAPE[5], 2: SHAPE[6]}))
    assert np.array_equal(alone.positions, prior.positions) and np.array_equal(alone.confidence, prior.confidence)


def test_two_anchors_and_a_swapped_pair_are_enough_now() -> None:
    """Two clearly placed channels and a swapped pair: four points, enough for the translation-and-scale
    fit (the rotating fit asked for three anchors and left the swap): the pair flips back."""
    layout = _layout([(0, k) for k in (1, 2, 5, 6)])
    maps = _maps([[(SHAPE[1], 10.0)], [(SHAPE[2], 10.0)],
                  [(SHAPE[5], 9.6), (SHAPE[6], 10.0)], [(SHAPE[6], 9.6), (SHAPE[5], 10.0)]])
    prior = _by_key(decode_whole_image(maps, layout, AMPLITUDE, min_confidence=0.0,
                                       shape_prior=_prior({1: SHAPE[1], 2: SHAPE[2], 3: SHAPE[5], 4: SHAPE[6]})))
    for k in (1, 2, 5, 6):
        assert _near(prior[(0, k)][0], SHAPE[k]), k


# A near-square and a pentagon (2D, 1 mm pixels, (y, x)), each corner its own channel; the network knows
# "a corner", not "which": every channel has a peak on every corner.
SQUARE = np.array([[11.2, 12.1], [11.9, 35.3], [35.6, 36.2], [34.8, 11.4]])
PENTAGON = 24.0 + 13.0 * np.stack([-np.cos(np.deg2rad(72.0 * np.arange(5))),
                                   np.sin(np.deg2rad(72.0 * np.arange(5)))], axis=1)


def _corners(shape: np.ndarray, degrees: float) -> List[Tuple[float, float]]:
    """``shape``'s corners turned by ``degrees`` about its centroid."""
    centre = shape.mean(0)
    return [tuple(p) for p in (shape - centre) @ _turn(degrees).T + centre]


def _polygon_prior(shape: np.ndarray, spread: float = 2.0):
    """Mean: ``shape`` in the image's orientation (scaled by 1.1, moved), ~2 mm spread; channel k is corner k."""
    return _prior({k + 1: tuple(p) for k, p in enumerate(1.1 * shape - 7.0)}, spread=spread)


def _every_corner(corners: Sequence[Tuple[float, float]], lowest: Optional[Sequence[int]] = None) -> torch.Tensor:
    """One channel per corner, each with a peak of 10 on every corner; with ``lowest``, channel k's peak on
    corner ``lowest[k]`` is only 7 (a fifth peak the four candidates per channel leave out)."""
    return _maps([[(p, 7.0 if lowest is not None and j == lowest[k] else 10.0) for j, p in enumerate(corners)]
                  for k in range(len(corners))])


@pytest.mark.parametrize("degrees", [0.0, 20.0, -20.0])
def test_a_prior_names_the_corners_of_a_square_without_any_anchor(degrees: float) -> None:
    """Four channels with equal peaks on all four corners of a near-square: alone, any assignment is a coin
    flip and all four are dropped as ambiguous. With the prior (the square in the image's orientation) each
    channel gets its own corner, turned by up to 20 degrees as well: a relabelling by a quarter turn would
    need a rotation the fit does not have, and a swap of two corners misplaces them by about 24 mm (12
    spreads), so every margin is far above log 2 and the confidence is the fitted height (1)."""
    corners = _corners(SQUARE, degrees)
    layout = _layout([(0, k) for k in range(1, 5)])
    maps = _every_corner(corners)
    alone = decode_whole_image(maps, layout, AMPLITUDE)
    assert len(alone) == 0 and set(_reasons(alone).values()) == {AMBIGUOUS}
    decoded = _by_key(decode_whole_image(maps, layout, AMPLITUDE, shape_prior=_polygon_prior(SQUARE)))
    assert sorted(decoded) == [(0, k) for k in range(1, 5)]
    for k in range(1, 5):
        assert _near(decoded[(0, k)][0], corners[k - 1]), (k, decoded[(0, k)][0])
        assert decoded[(0, k)][1] == pytest.approx(1.0, abs=TOL_CONFIDENCE)


@pytest.mark.parametrize("degrees", [0.0, 20.0])
def test_a_prior_names_the_corners_of_a_pentagon_without_any_anchor(degrees: float) -> None:
    """Five channels, each with equal peaks on four corners (its own among them) and a lower one on the
    corner two ahead: 5 x 5 assignments, 120 permutations of the full ones tried. Alone all are dropped as
    ambiguous; with the prior each gets its own corner with confidence 1."""
    corners = _corners(PENTAGON, degrees)
    layout = _layout([(0, k) for k in range(1, 6)])
    maps = _every_corner(corners, lowest=[(k + 2) % 5 for k in range(5)])
    alone = decode_whole_image(maps, layout, AMPLITUDE)
    assert len(alone) == 0 and set(_reasons(alone).values()) == {AMBIGUOUS}
    decoded = _by_key(decode_whole_image(maps, layout, AMPLITUDE, shape_prior=_polygon_prior(PENTAGON)))
    assert sorted(decoded) == [(0, k) for k in range(1, 6)]
    for k in range(1, 6):
        assert _near(decoded[(0, k)][0], corners[k - 1]), (k, decoded[(0, k)][0])
        assert decoded[(0, k)][1] == pytest.approx(1.0, abs=TOL_CONFIDENCE)


def test_a_prior_turned_by_a_quarter_turn_relabels_the_square() -> None:
    """The same maps, a prior whose corner k is the image's corner k + 1: the decoder follows the prior's
    orientation (corner k goes to channel k - 1), which shows it is the orientation that names them."""
    layout = _layout([(0, k) for k in range(1, 5)])
    maps = _every_corner([tuple(p) for p in SQUARE])
    decoded = _by_key(decode_whole_image(maps, layout, AMPLITUDE, shape_prior=_polygon_prior(np.roll(SQUARE, -1, 0))))
    for k in range(1, 5):
        assert _near(decoded[(0, k)][0], tuple(SQUARE[k % 4])), k


def test_two_ambiguous_pairs_of_one_group_are_decided_jointly() -> None:
    """Channels 1 and 2 each see corners 1 and 2 alike, channels 3 and 4 corners 3 and 4: two components of
    two points each, neither enough alone (three points needed); together four points, and the four joint
    assignments (2 x 2) are scored at once: every channel gets its own corner, with confidence 1."""
    corners = [tuple(p) for p in SQUARE]
    layout = _layout([(0, k) for k in range(1, 5)])
    maps = _maps([[(corners[0], 10.0), (corners[1], 10.0)]] * 2 + [[(corners[2], 10.0), (corners[3], 10.0)]] * 2)
    alone = decode_whole_image(maps, layout, AMPLITUDE)
    assert len(alone) == 0
    decoded = _by_key(decode_whole_image(maps, layout, AMPLITUDE, shape_prior=_polygon_prior(SQUARE)))
    for k in range(1, 5):
        assert _near(decoded[(0, k)][0], corners[k - 1]), k
        assert decoded[(0, k)][1] == pytest.approx(1.0, abs=TOL_CONFIDENCE)


def test_above_the_cap_a_local_search_from_the_heatmap_solution_finds_the_corners(monkeypatch) -> None:
    """With the enumeration cap at 1 the square's 24 permutations are not listed: the search moves from the
    heatmap's (arbitrary) solution by single swaps while the combined score improves, and ends on the
    right corners."""
    from poi_nnunet.inference import prior_assignment

    monkeypatch.setattr(prior_assignment, "MAX_ASSIGNMENTS", 1)
    corners = _corners(SQUARE, 10.0)
    layout = _layout([(0, k) for k in range(1, 5)])
    decoded = _by_key(decode_whole_image(_every_corner(corners), layout, AMPLITUDE,
                                         shape_prior=_polygon_prior(SQUARE)))
    for k in range(1, 5):
        assert _near(decoded[(0, k)][0], corners[k - 1]), k


# Two triangles of a landmark-only dataset (2D, 1 mm pixels, (y, x)): channels 0-2 are A's corners, 3-5 B's,
# two rigid groups of the plans; the network confuses corner k of A with corner k of B.
TRIANGLE_A = np.array([[8.2, 8.1], [8.7, 21.3], [19.1, 10.4]])
TRIANGLE_B = np.array([[27.6, 29.8], [39.4, 25.7], [36.2, 40.3]])


def _two_triangle_prior():
    """Two groups of structure 0, each its triangle scaled by 1.2 and moved (the decoder fits each back on
    its own), spread 1.5 mm."""
    from poi_nnunet.shape_prior import ShapePrior

    return ShapePrior.from_block({"fit": "translation_scale", "spacing_mm": [1.0, 1.0], "groups": [
        {"structure": 0, "channels": [0, 1, 2], "mean_mm": (1.2 * TRIANGLE_A + (50.0, -3.0)).tolist(),
         "spread_mm": [1.5] * 3},
        {"structure": 0, "channels": [3, 4, 5], "mean_mm": (1.2 * TRIANGLE_B - (20.0, 60.0)).tolist(),
         "spread_mm": [1.5] * 3}]})


@pytest.mark.parametrize("own, other", [(10.0, 10.0), (9.6, 10.0)])
def test_channels_of_two_groups_competing_for_each_others_corners_land_on_their_own(own: float, other: float) -> None:
    """Channel k (A's corner k) and channel k + 3 (B's corner k) each see both corners k, ``own`` on its own
    and ``other`` on the other's: three components, each with one channel of each group, so no single group
    holds one. Alone: ties are dropped as ambiguous, a slight preference swaps every pair. With the two
    groups' log-likelihoods summed over the 2 x 2 x 2 joint assignments, every channel lands on its own
    corner (a swap puts a corner of B among A's, tens of spreads off), with the fitted height as confidence."""
    keys = [(0, k) for k in range(1, 7)]
    layout = _layout(keys, labels=())
    corners = [tuple(p) for p in np.concatenate([TRIANGLE_A, TRIANGLE_B])]
    maps = _maps([[(corners[c], own), (corners[(c + 3) % 6], other)] for c in range(6)])
    alone = decode_whole_image(maps, layout, AMPLITUDE, min_confidence=0.0)
    if own == other:
        assert _reasons(decode_whole_image(maps, layout, AMPLITUDE)) == {k: AMBIGUOUS for k in keys}
    else:
        for c, key in enumerate(keys):
            assert _near(_by_key(alone)[key][0], corners[(c + 3) % 6]), key
    decoded = _by_key(decode_whole_image(maps, layout, AMPLITUDE, shape_prior=_two_triangle_prior()))
    assert sorted(decoded) == keys
    for c, key in enumerate(keys):
        assert _near(decoded[key][0], corners[c]), (key, decoded[key][0])
        assert decoded[key][1] == pytest.approx(own / AMPLITUDE, abs=TOL_CONFIDENCE)
