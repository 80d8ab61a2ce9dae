"""What a prediction run did not write, and why: one summary line and ``<out>/dropped_points.json``.

The point files hold only points (the unified format has no place for a missing one), so a run
that leaves points out says so twice: per case (:meth:`~.decoding.DecodedPoints.report`) and once
at the end, counted by reason, with the hint that ``--min_confidence 0`` writes every point the
threshold left out. ``dropped_points.json`` lists them per case::

    {"min_confidence": 0.1,
     "cases": {"<case>": [{"structure": 1, "poi": 2, "reason": "below_min_confidence"}, ...]}}

A rerun that skips finished cases keeps their entries; a case predicted again replaces its own.
The file is written only where something was dropped (removed when nothing is left in it);
``poi_evaluate`` skips it by name.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..atomic import atomic_write_text
from ..geometry import PreprocessedSpace
from .decoding import AMBIGUOUS, BELOW_MIN_CONFIDENCE, PEAK_TAKEN, DecodedPoints, DroppedPoint

DROPPED_POINTS_FILE = "dropped_points.json"
THRESHOLD_REASONS = (BELOW_MIN_CONFIDENCE, AMBIGUOUS, PEAK_TAKEN)  # what --min_confidence 0 writes


@dataclass
class DropSummary:
    """Points written and dropped over the cases of one run."""

    min_confidence: float
    written: int = 0
    dropped: Dict[str, List[DroppedPoint]] = field(default_factory=dict)  # case -> its dropped points

    def add(self, case: str, points: DecodedPoints, space: PreprocessedSpace) -> None:
        """Count one case's points (those :meth:`DecodedPoints.to_world` leaves outside the image are dropped)."""
        outside = points.outside_image(space)
        self.written += len(points) - len(outside)
        self.dropped[case] = list(points.dropped) + outside

    def by_reason(self) -> Counter:
        return Counter(d.reason for points in self.dropped.values() for d in points)

    def line(self, out_dir: Optional[Path] = None) -> str:
        """``wrote N point(s) in K case(s)``, then what was not written by reason, and the hint."""
        line = f"wrote {self.written} point(s) in {len(self.dropped)} case(s)"
        reasons = self.by_reason()
        if not reasons:
            return line + "; none left out"
        counts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(reasons.items()))
        line += f"; {sum(reasons.values())} not written ({counts})"
        if out_dir is not None:
            line += f", listed in {Path(out_dir) / DROPPED_POINTS_FILE}"
        threshold = sum(reasons[r] for r in THRESHOLD_REASONS)
        if threshold:
            line += (f". {threshold} were under --min_confidence {self.min_confidence:g}: "
                     "--min_confidence 0 writes them all")
        return line

    def write(self, out_dir: Path) -> Optional[Path]:
        """Merge this run's cases into ``out_dir/dropped_points.json``; return its path (None: nothing dropped)."""
        path = Path(out_dir) / DROPPED_POINTS_FILE
        cases = {}
        if path.is_file():
            try:
                cases = dict(json.loads(path.read_text()).get("cases", {}))
            except (ValueError, AttributeError):
                cases = {}  # an unreadable list from an earlier run is replaced
        for case, points in self.dropped.items():
            cases[case] = [{"structure": d.structure, "poi": d.poi, "reason": d.reason} for d in points]
        cases = {case: points for case, points in sorted(cases.items()) if points}
        if not cases:
            path.unlink(missing_ok=True)
            return None
        atomic_write_text(path, json.dumps({"min_confidence": self.min_confidence, "cases": cases}, indent=1) + "\n")
        return path
