"""One case's outputs: ``<case>.json`` (unified format), ``<case>.mrk.json`` (3D Slicer) and the segmentation.

Every file is written under a temporary name in ``out_dir`` and renamed into
place, so a killed run never leaves half a file. The segmentation goes first and
the point file last: a case whose ``<case>.json`` exists is complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ..atomic import atomic_write, atomic_write_text, image_suffix
from ..markups import write_markups_json
from ..pois import PoiSet, write_poi_file

MARKUPS_SUFFIX = ".mrk.json"


def poi_names(dataset_json: Mapping[str, Any]) -> Dict[int, str]:
    return {int(k): str(v) for k, v in (dataset_json.get("pois") or {}).items()}


def case_output_files(out_dir: Path, case: str, file_ending: str, with_segmentation: bool,
                      with_points: bool = True) -> List[Path]:
    """Every file a finished case has, the point file last (a segmentation-only model writes no points)."""
    files = [Path(out_dir) / f"{case}{file_ending}"] if with_segmentation else []
    if with_points:
        files += [Path(out_dir) / f"{case}{MARKUPS_SUFFIX}", Path(out_dir) / f"{case}.json"]
    return files


def case_is_done(out_dir: Path, case: str, file_ending: str, with_segmentation: bool, with_points: bool = True) -> bool:
    return all(p.is_file() for p in case_output_files(out_dir, case, file_ending, with_segmentation, with_points))


def write_segmentation(path: Path, segmentation: np.ndarray, properties: dict, reader_writer: Any) -> None:
    """nnU-Net's writer (the dataset's reader/writer class) into a temporary name, then renamed."""
    atomic_write(path, lambda tmp: reader_writer.write_seg(segmentation, str(tmp), properties),
                 suffix_hint=image_suffix(path))


def write_case_outputs(out_dir: Path, case: str, pois: Optional[PoiSet], dataset_json: Mapping[str, Any],
                       segmentation: Optional[np.ndarray] = None, properties: Optional[dict] = None,
                       reader_writer: Any = None) -> List[Path]:
    """Write the case's segmentation (when given), markups and point file (unless ``pois`` is None: a
    segmentation-only model); return the paths written."""
    out_dir = Path(out_dir)
    written = []
    if segmentation is not None:
        seg_path = out_dir / f"{case}{dataset_json['file_ending']}"
        write_segmentation(seg_path, segmentation, properties, reader_writer)
        written.append(seg_path)
    if pois is None:
        return written
    markups = out_dir / f"{case}{MARKUPS_SUFFIX}"
    write_markups_json(markups, pois, poi_names(dataset_json), node_name=case)
    points = out_dir / f"{case}.json"
    write_poi_file(points, pois)
    return written + [markups, points]


def write_run_files(out_dir: Path, dataset_json: Mapping[str, Any], plans: Mapping[str, Any],
                    arguments: Optional[Mapping[str, Any]] = None) -> None:
    """``dataset.json`` and ``plans.json`` of the model (and the arguments), as nnU-Net's predictor leaves them.

    ``poi_evaluate`` reads the file ending and POI names from that ``dataset.json``.
    """
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "dataset.json", json.dumps(dataset_json, indent=2) + "\n")
    atomic_write_text(out_dir / "plans.json", json.dumps(plans, indent=2) + "\n")
    if arguments is not None:
        atomic_write_text(out_dir / "predict_from_raw_data_args.json",
                          json.dumps(arguments, indent=2, default=str) + "\n")
