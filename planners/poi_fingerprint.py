"""The POI part of the dataset fingerprint: what landmark planning needs beyond nnU-Net's own.

nnU-Net's ``dataset_fingerprint.json`` stays nnU-Net's (shared with
``nnUNetv2_plan_and_preprocess``); this part is saved beside it as
``poi_fingerprint.json``. It holds the per-case measurements of
:mod:`planners.case_analysis` and their dataset-wide summary: field of view,
structure extents, POIs per structure and case, how often each POI is missing,
each POI's distance to its structure's surface and to its nearest neighbour,
and how much of the field of view the POI-bearing structures fill.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.raw_dataset import RawDataset

from .case_analysis import analyze_case

FINGERPRINT_FILE = "poi_fingerprint.json"
FINGERPRINT_VERSION = 4  # 2: annotated_extent_mm of sparse labels; 3: no mask statistics from sparse labels;
# 4: POIs of 2D cases under another structure's label are occluded, not measured against their surface
PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
# Starting spawned workers costs about two seconds (each imports the scientific stack), while one
# process reads and measures about 2e7 label voxels per second (measured on the spine phantom): below
# this many voxels in the whole dataset a single process finishes first.
PARALLEL_MIN_VOXELS = 5e7


def percentiles(values: Iterable[float], axis: int = 0) -> Optional[Dict[str, Any]]:
    """``{"p0": .., "p5": .., ...}`` of a sample (per axis for vectors); ``None`` for an empty sample."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return None
    q = np.percentile(arr, PERCENTILES, axis=axis)
    return {f"p{p}": (q[i].tolist() if np.ndim(q[i]) else float(q[i])) for i, p in enumerate(PERCENTILES)}


def source_stamp(ds: RawDataset) -> str:
    """Hash of dataset.json and the name, size and modification time of every training file.

    A fingerprint whose stamp matches was computed from exactly these files (and they were valid
    then), so a re-run may reuse it instead of reading every image again.
    """
    h = hashlib.sha256()
    h.update(f"v{FINGERPRINT_VERSION}".encode())
    h.update(ds.dataset_json.read_bytes())
    for sub in ("imagesTr", "labelsTr", "poisTr"):
        folder = ds.path / sub
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            st = f.stat()
            h.update(f"{sub}/{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def measure_cases(ds: RawDataset, num_processes: int, progress: bool = True) -> List[Dict[str, Any]]:
    """Run :func:`analyze_case` on every training case, in parallel, with a progress bar."""
    jobs = []
    for case in ds.case_ids("Tr"):
        label = ds.label_file(case) if ds.has_labels() else None
        poi = ds.poi_file(case)
        jobs.append((case, str(ds.image_files(case)[0]), str(label) if label else None,
                     str(poi) if poi.is_file() else None, ds.ignore_label))
    bar = tqdm(total=len(jobs), desc="POI fingerprint", unit="case", disable=not progress)
    results: List[Dict[str, Any]] = []
    voxels = sum(int(np.prod(ImageGeometry.from_file(job[1]).size)) for job in jobs)
    try:
        if num_processes <= 1 or len(jobs) <= 1 or voxels < PARALLEL_MIN_VOXELS:
            for job in jobs:
                results.append(analyze_case(*job))
                bar.update()
        else:
            # spawn, like nnU-Net: forking a process that already runs ITK or torch threads can deadlock
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                for r in pool.imap(_analyze_job, jobs):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    return results


def _analyze_job(job: Sequence[Optional[str]]) -> Dict[str, Any]:
    return analyze_case(*job)


def summarize(cases: List[Dict[str, Any]], meta: Mapping[str, Any]) -> Dict[str, Any]:
    """Dataset-wide statistics from the per-case measurements."""
    points = [(c["case"], p) for c in cases for p in c["points"]]
    summary: Dict[str, Any] = {
        "dim": cases[0]["dim"] if cases else None,
        "num_cases": len(cases),
        "fov_mm": percentiles(c["fov_mm"] for c in cases),
        "pois_per_case": {c["case"]: len(c["points"]) for c in cases},
        "poi_bearing_fraction": percentiles(c["poi_bearing_fraction"] for c in cases if c["points"]),
        "structures": _structure_summary(cases),
        "pois": _poi_summary(cases, points, meta),
        "pairs": _pair_summary(points),
        "shared_poi_fraction": _shared_poi_fraction(cases),
        "annotated_extent_mm": _annotated_extent_summary(cases),
    }
    return summary


def _annotated_extent_summary(cases: List[Dict[str, Any]]) -> Optional[Dict[str, float]]:
    """Per clicked class of a sparse-label dataset, the largest extent of its clicks over the cases (None
    for dense labels)."""
    if not any("annotated_extent_mm" in c for c in cases):
        return None
    out: Dict[str, float] = {}
    for c in cases:
        for label, extent in c.get("annotated_extent_mm", {}).items():
            out[label] = max(out.get(label, 0.0), float(extent))
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _structure_summary(cases: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    keys = sorted({k for c in cases for k in c["structures"]}, key=int)
    for k in keys:
        present = [c for c in cases if k in c["structures"]]
        counts = [sum(1 for p in c["points"] if str(p["structure"]) == k) for c in present]
        out[k] = {
            "cases": len(present),
            "extent_mm": percentiles(c["structures"][k]["extent_mm"] for c in present),
            "crop_with_neighbours_mm": percentiles(c["structures"][k]["crop_with_neighbours_mm"] for c in present),
            "pois_per_case": percentiles(counts),
        }
    return out


def _poi_summary(cases, points, meta: Mapping[str, Any]) -> Dict[str, Any]:
    """Per POI id: counts, missing rate, surface and nearest-neighbour distance percentiles.

    A POI is *expected* on a structure instance (a structure in a case) whenever that structure label
    carries the POI in any case; it is *missing* where such an instance lacks it.
    """
    carriers: Dict[int, set] = {}
    for _, p in points:
        carriers.setdefault(p["poi"], set()).add(p["structure"])
    instances: Dict[int, int] = {}
    for c in cases:
        for s in {p["structure"] for p in c["points"]}:
            instances[s] = instances.get(s, 0) + 1
    names = {int(k): v for k, v in (meta.get("pois") or {}).items()}
    out: Dict[str, Any] = {}
    for poi in sorted(carriers):
        mine = [p for _, p in points if p["poi"] == poi]
        expected = sum(instances.get(s, 0) for s in carriers[poi])
        out[str(poi)] = {
            "name": names.get(poi, str(poi)),
            "count": len(mine),
            "structures": sorted(carriers[poi]),
            "missing_fraction": 1.0 - len(mine) / expected if expected else 0.0,
            "surface_distance_mm": percentiles(p["surface_distance_mm"] for p in mine),
            "nearest_poi_mm": percentiles(p["nearest_poi_mm"] for p in mine),
        }
    return out


def _pair_summary(points) -> Dict[str, Any]:
    """Median grid position of each (structure, poi) pair: where in the image that point usually is."""
    grouped: Dict[str, List[List[float]]] = {}
    for _, p in points:
        grouped.setdefault(f"{p['structure']}:{p['poi']}", []).append(p["grid_mm"])
    return {k: {"count": len(v), "median_grid_mm": np.median(np.array(v), axis=0).tolist()}
            for k, v in sorted(grouped.items())}


def _shared_poi_fraction(cases: List[Dict[str, Any]]) -> float:
    """Fraction of (case, POI id) occurrences where the id sits on two or more structures of that case.

    High for vertebrae (every vertebra carries the same POI ids), zero when each id names one point.
    """
    total = shared = 0
    for c in cases:
        per_id: Dict[int, set] = {}
        for p in c["points"]:
            per_id.setdefault(p["poi"], set()).add(p["structure"])
        total += len(per_id)
        shared += sum(1 for s in per_id.values() if len(s) > 1)
    return shared / total if total else 0.0


def save_fingerprint(path: Path, fingerprint: Dict[str, Any]) -> None:
    from poi_nnunet.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(fingerprint, separators=(",", ":")) + "\n")


def load_fingerprint(path: Path) -> Optional[Dict[str, Any]]:
    """The saved POI fingerprint, or ``None`` when absent, unreadable or from another version."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != FINGERPRINT_VERSION:
        return None
    return data


def build_fingerprint(ds: RawDataset, stamp: str, num_processes: int, progress: bool = True) -> Dict[str, Any]:
    cases = measure_cases(ds, num_processes, progress)
    return {"version": FINGERPRINT_VERSION, "source_stamp": stamp, "summary": summarize(cases, ds.meta),
            "cases": cases}
