"""Writing the evaluation: ``summary.json``, ``points.csv`` and the table printed to the terminal.

Each file is written atomically, so a reader never finds half a summary.
JSON has no NaN: undefined values are written as ``null``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ..atomic import atomic_write_text
from .points import PointMatch

CSV_COLUMNS = ("case", "structure", "poi", "poi_name", "ref_x", "ref_y", "ref_z", "pred_x", "pred_y", "pred_z",
               "error_mm", "identified", "status")


def json_safe(value: Any) -> Any:
    """Replace NaN and infinities by ``None`` throughout nested dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")


def points_csv_text(rows: Sequence[PointMatch], poi_names: Mapping[int, str]) -> str:
    """One line per reference or predicted point; empty cells where a side or a coordinate does not exist."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r.case, r.structure, r.poi, poi_names.get(r.poi, ""),
            *_xyz(r.ref), *_xyz(r.pred),
            "" if math.isnan(r.error_mm) else repr(r.error_mm),
            int(r.identified) if r.ref is not None and r.pred is not None else "",
            r.status,
        ])
    return buffer.getvalue()


def write_points_csv(path: Path, rows: Sequence[PointMatch], poi_names: Mapping[int, str]) -> None:
    atomic_write_text(path, points_csv_text(rows, poi_names))


def _xyz(position: Any) -> List[str]:
    coords = [repr(float(c)) for c in position] if position is not None else []
    return coords + [""] * (3 - len(coords))


def format_table(summary: Mapping[str, Any], max_poi_rows: int = 60) -> str:
    """A compact text table: one line per POI id (or per structure, when there are more than
    ``max_poi_rows`` POIs) and overall, then segmentation per label.

    When points were not scored (``summary["points"]`` is None: a masks-only
    comparison) the point part is one line saying why, followed by the
    segmentation part and the cases that could not be compared.
    """
    points = summary.get("points")
    cases = summary["cases"]
    seg = summary["segmentation"]
    if points is not None:
        lines = _points_lines(summary, points, max_poi_rows)
    else:
        lines = [f"points not scored: {summary.get('points_not_scored') or 'no point files on one side'}"]
        if cases["missing"]:
            lines.append(f"reference cases without a predicted mask (not scored): {', '.join(cases['missing'])}")
        if cases["extra"]:
            lines.append(f"predicted cases without reference (not scored): {', '.join(cases['extra'])}")
        if seg["cases_without_ref_mask"]:
            lines.append(f"cases without a reference mask (not scored): {', '.join(seg['cases_without_ref_mask'])}")
    if seg["n_cases"]:
        lines.append(f"segmentation ({seg['n_cases']} cases with both masks)")
        lines.append(f"{'label':>6} {'name':<16} {'dice':>7} {'asd_mm':>7}")
        for label, entry in seg["per_label"].items():
            lines.append(f"{label:>6} {(entry.get('name') or '')[:16]:<16} {_num(entry['dice']['mean'])} "
                         f"{_num(entry['asd_mm']['mean'])}")
        lines.append(f"{'mean':>6} {'':<16} {_num(seg['mean_dice']['mean'])} {_num(seg['mean_asd_mm']['mean'])}"
                     f"   inverse-frequency-weighted dice {_num(seg['inverse_frequency_weighted_dice']['mean'])}")
    return "\n".join(lines)


def _points_lines(summary: Mapping[str, Any], points: Mapping[str, Any], max_poi_rows: int) -> List[str]:
    """The point part of :func:`format_table`: TRE, success and identification rates, missing and extra cases."""
    keys = list(points["overall"]["success_rate"])
    voxel_keys = list(points["overall"].get("success_rate_voxels") or {})
    head = f"{'poi':>6} {'name':<16} {'ref':>5} {'miss':>5} {'extra':>5} {'mean':>7} {'median':>7} {'std':>7} {'max':>7} " \
           + " ".join(f"{'<=' + k:>6}" for k in keys) + "".join(f" {'<=' + k + 'vx':>6}" for k in voxel_keys) \
           + f" {'id':>6}"
    lines = [f"TRE in mm, success and identification rates in % ({summary['cases']['n_scored']} cases; <=N: within "
             f"N mm{', <=Nvx: within N voxels of the reference image' if voxel_keys else ''})", head]
    if len(points["per_poi"]) <= max_poi_rows:
        for poi, group in points["per_poi"].items():
            lines.append(_point_line(poi, group.get("name") or "", group, keys, voxel_keys))
    else:
        lines[1] = lines[1].replace(f"{'poi':>6}", f"{'struct':>6}", 1)
        lines.append(f"(per structure: {len(points['per_poi'])} POI ids, see summary.json and points.csv for each)")
        for structure, group in points["per_structure"].items():
            lines.append(_point_line(structure, group.get("name") or "", group, keys, voxel_keys))
    lines.append(_point_line("all", "", points["overall"], keys, voxel_keys))
    cases = summary["cases"]
    if cases["missing"]:
        lines.append(f"cases without prediction (all points missing): {', '.join(cases['missing'])}")
    if cases["extra"]:
        lines.append(f"predicted cases without reference (not scored): {', '.join(cases['extra'])}")
    return lines


def _point_line(poi: str, name: str, group: Dict[str, Any], keys: Sequence[str],
                voxel_keys: Sequence[str] = ()) -> str:
    tre = group["tre_mm"]
    in_voxels = group.get("success_rate_voxels") or {}
    rates = " ".join([_pct(group["success_rate"][k]) for k in keys]
                     + [_pct(in_voxels.get(k, float("nan"))) for k in voxel_keys])
    return (f"{poi:>6} {name[:16]:<16} {group['n_ref']:>5} {group['n_missing']:>5} {group['n_extra']:>5} "
            f"{_num(tre['mean'])} {_num(tre['median'])} {_num(tre['std'])} {_num(tre['max'])} {rates} "
            f"{_pct(group['identification_rate'])}")


def _num(value: Any) -> str:
    return f"{'-':>7}" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:7.2f}"


def _pct(value: Any) -> str:
    return f"{'-':>6}" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:6.1f}"
