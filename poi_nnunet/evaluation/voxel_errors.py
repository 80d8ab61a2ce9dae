"""Point errors in voxels of the reference image, for success rates that mean the same at any spacing.

A 2 mm threshold on 5.5 mm pixels is a fraction of a pixel: "8.6% within 2 mm" alarms without saying
whether the model is off by a pixel. The error vector (world mm) is carried into the index space of the
case's reference image (its direction and spacing: ``index = D^-1 (world - origin) / spacing``), and its
length there is the error in voxels: one voxel step along any axis is 1, whatever that axis' spacing.

The grid is the reference's label file of the case where it has one, else its first image channel
(a raw dataset's ``imagesTr``/``imagesTs``); a reference without either (a flat folder of point files)
gets no voxel errors, and the summary says so (``success_rate_voxels`` null).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..geometry import ImageGeometry
from .points import MATCHED, PointMatch


def with_voxel_errors(rows: Sequence[PointMatch], grid_files: Mapping[str, Optional[Path]]) -> List[PointMatch]:
    """``rows`` with ``error_voxels`` set on the matched rows of every case that has a grid file (headers
    only are read, once per case)."""
    geometries: Dict[str, Optional[ImageGeometry]] = {}
    out: List[PointMatch] = []
    for row in rows:
        if row.status != MATCHED:
            out.append(row)
            continue
        if row.case not in geometries:
            path = grid_files.get(row.case)
            geometries[row.case] = ImageGeometry.from_file(path) if path is not None else None
        geometry = geometries[row.case]
        if geometry is None or len(row.ref) != geometry.dim:
            out.append(row)
            continue
        ref, pred = geometry.world_to_index(np.asarray([row.ref, row.pred], dtype=np.float64))
        out.append(replace(row, error_voxels=float(np.linalg.norm(pred - ref))))
    return out
