"""Identity confusions counted against hand-placed points."""
from poi_nnunet.evaluation.identity import identity_confusions
from poi_nnunet.pois import Poi, PoiSet


def _set(*points):
    return PoiSet([Poi(0, poi, pos) for poi, pos in points])


REFERENCE = _set((1, (0.0, 0.0)), (2, (10.0, 0.0)), (3, (0.0, 1.5)))


def test_point_on_another_landmark_is_confused_and_a_merely_imprecise_one_is_not():
    predicted = _set((1, (9.5, 0.5)),   # 0.71 mm from poi 2, 9.5 mm from its own place
                     (2, (13.0, 0.0)))  # 3 mm off, but on no other landmark
    assert identity_confusions(REFERENCE, predicted) == {(0, 1): (0, 2)}


def test_landmarks_closer_than_the_radius_do_not_make_a_right_point_confused():
    # poi 3 truly lies 1.5 mm from poi 1; a point 0.2 mm from its own place is right
    predicted = _set((3, (0.0, 1.3)), (1, (0.0, 0.9)))  # poi 1's point is nearer poi 3 (0.6) than itself (0.9)
    assert identity_confusions(REFERENCE, predicted) == {(0, 1): (0, 3)}


def test_radius_is_respected_and_unknown_keys_are_ignored():
    predicted = _set((1, (7.5, 0.0)), (9, (10.0, 0.0)))  # 2.5 mm from poi 2; poi 9 not in the reference
    assert identity_confusions(REFERENCE, predicted) == {}
    assert identity_confusions(REFERENCE, predicted, radius_mm=3.0) == {(0, 1): (0, 2)}
