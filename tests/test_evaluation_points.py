"""Point metrics on hand-made cases whose answers are worked out by hand."""
from __future__ import annotations

import math

import pytest

from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.evaluation import match_points, success_rates, summarise_rows, tre_statistics
from poi_nnunet.pois import Poi, PoiSet

# Four POIs 100 mm apart, predicted 1, 2, 3 and 5 mm off along different axes.
REF = PoiSet([Poi(1, 1, (0.0, 0.0, 0.0)), Poi(1, 2, (100.0, 0.0, 0.0)),
              Poi(2, 1, (0.0, 100.0, 0.0)), Poi(2, 2, (0.0, 0.0, 100.0))])
PRED = PoiSet([Poi(1, 1, (1.0, 0.0, 0.0)), Poi(1, 2, (100.0, 2.0, 0.0)),
               Poi(2, 1, (0.0, 100.0, -3.0)), Poi(2, 2, (3.0, 4.0, 100.0))])


def test_offsets_of_1_2_3_5_mm_give_known_statistics_and_rates() -> None:
    rows = match_points("a", REF, PRED)
    assert [r.error_mm for r in rows] == pytest.approx([1.0, 2.0, 3.0, 5.0])
    stats = summarise_rows(rows)
    assert stats["tre_mm"] == pytest.approx({"mean": 2.75, "median": 2.5, "std": math.sqrt(8.75 / 4), "max": 5.0})
    assert stats["success_rate"] == pytest.approx({"2": 0.5, "2.5": 0.5, "3": 0.75, "4": 0.75})
    assert (stats["n_ref"], stats["n_pred"], stats["n_matched"], stats["n_missing"], stats["n_extra"]) == (4, 4, 4, 0, 0)
    assert stats["identification_rate"] == 1.0


def test_missing_points_count_as_failures_and_extra_points_are_counted() -> None:
    pred = PoiSet([p for p in PRED if p.key != (2, 2)] + [Poi(3, 7, (5.0, 5.0, 5.0))])
    rows = match_points("a", REF, pred)
    assert [r.status for r in rows] == ["matched", "matched", "matched", "missing", "extra"]
    assert rows[3].pred is None and rows[4].ref is None and math.isnan(rows[3].error_mm)
    stats = summarise_rows(rows)
    assert (stats["n_ref"], stats["n_pred"], stats["n_matched"], stats["n_missing"], stats["n_extra"]) == (4, 4, 3, 1, 1)
    assert stats["tre_mm"]["mean"] == pytest.approx(2.0)
    # the missing point stays in the denominator: 2 of 4 within 2 mm, 3 of 4 within 3 mm
    assert stats["success_rate"] == pytest.approx({"2": 0.5, "2.5": 0.5, "3": 0.75, "4": 0.75})
    assert stats["identification_rate"] == pytest.approx(0.75)


def test_identification_needs_the_radius_and_the_closest_reference_point_2d() -> None:
    ref = PoiSet([Poi(0, 1, (0.0, 0.0)), Poi(0, 2, (10.0, 0.0)), Poi(0, 3, (50.0, 50.0))])
    pred = PoiSet([
        Poi(0, 1, (6.0, 0.0)),     # 6 mm off, but 4 mm from POI 2: confused with the neighbour
        Poi(0, 2, (10.0, 3.0)),    # 3 mm off and nearest to its own reference: identified
        Poi(0, 3, (50.0, 75.0)),   # nearest to its own reference but 25 mm off: beyond the radius
    ])
    rows = match_points("a", ref, pred, id_radius_mm=20.0)
    assert [r.identified for r in rows] == [False, True, False]
    assert summarise_rows(rows)["identification_rate"] == pytest.approx(1 / 3)
    wider = match_points("a", ref, pred, id_radius_mm=30.0)
    assert [r.identified for r in wider] == [False, True, True]


def test_points_match_by_structure_and_poi_not_by_position() -> None:
    ref = PoiSet([Poi(20, 101, (0.0, 0.0)), Poi(21, 101, (30.0, 0.0))])
    pred = PoiSet([Poi(21, 101, (0.0, 0.0))])  # right spot, wrong vertebra
    rows = match_points("a", ref, pred)
    assert [(r.structure, r.status) for r in rows] == [(20, "missing"), (21, "matched")]
    assert rows[1].error_mm == pytest.approx(30.0) and not rows[1].identified


def test_undefined_statistics_are_nan_not_zero() -> None:
    assert all(math.isnan(v) for v in tre_statistics([]).values())
    assert all(math.isnan(v) for v in success_rates([], 0).values())
    assert success_rates([], 3, thresholds_mm=(2.0,)) == {"2": 0.0}


def test_mixed_dimensions_are_an_error() -> None:
    with pytest.raises(PoiNnunetError, match="case a"):
        match_points("a", PoiSet([Poi(0, 1, (0.0, 0.0))]), PoiSet([Poi(0, 1, (0.0, 0.0, 0.0))]))
