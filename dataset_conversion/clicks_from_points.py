"""Source (a) of `poi_convert clicks`: clicked points files (--points) on their images (--images).

Reads and checks every points file against its case's image (class, dimension,
inside the image, one class per voxel), collecting every problem before
failing; works out the class labels (--labels, --labels-from or the image
dataset's) and the channel names; then paints and writes the sparse dataset.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from poi_nnunet.errors import PoiNnunetError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, read_poi_file_lenient
from poi_nnunet.raw_dataset import RawDataset

from ._common import fail, raise_if
from ._images import VOLUME_SUFFIXES, read_image, strip_image_suffix
from .click_simulation import Click, annotated_voxels, containing_voxel, paint_clicks
from .clicks_writing import (CLICKS_FOLDER, annotation_cost, click_writer, copy_held_out_cases, option_error,
                             sparse_label_image)


def from_points(args: argparse.Namespace, radius: float) -> Tuple[Path, Dict[str, Any]]:
    """Write the dataset of the clicks in ``args.points``; return its folder and the labelling cost."""
    folder = Path(args.points)
    if not folder.is_dir():
        raise fail(folder, "no such folder of points files")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise fail(folder, "holds no <case>.json points files")
    if not args.images:
        raise option_error("--images", "is required with --points (an image folder or a raw dataset)")
    ds = _as_dataset(args.images)
    labels = _class_labels(args, ds)
    folder_images = {} if ds is not None else {strip_image_suffix(p): p for p in Path(args.images).iterdir()
                                               if p.name.lower().endswith(VOLUME_SUFFIXES)}
    cases, problems = [], []
    for points_file in files:
        try:
            images = _case_images(args.images, ds, folder_images, points_file.stem)
            geometry = ImageGeometry.from_file(images[0])
        except PoiNnunetError as exc:
            problems.append(Problem(str(points_file), str(exc)))
            continue
        clicks, found = _read_clicks(points_file, geometry, set(labels.values()), images[0])
        problems += found
        cases.append((points_file, images, geometry, clicks))
    raise_if(problems, f"cannot convert the clicks in {folder}")
    if ds is not None:
        channels, ending = ds.channel_names, ds.file_ending
        left_out = sorted(set(ds.case_ids("Tr")) - {f.stem for f in files})
        if left_out:
            print(f"note: no points file for {len(left_out)} case(s), not converted: {', '.join(left_out)}",
                  file=sys.stderr)
    else:
        channels, ending = _channel_names(args, max(len(c[1]) for c in cases)), ".nii.gz"
    writer = click_writer(args, channels, labels, ds, ending)
    ignore = writer.labels["ignore"]
    counts = []
    with writer:
        for points_file, images, geometry, clicks in cases:
            case = points_file.stem
            sparse = paint_clicks(geometry.size[::-1], geometry.spacing[::-1], clicks, radius, ignore)
            counts.append(annotated_voxels(sparse, ignore))
            sources = [p if p.name.endswith(ending) else read_image(p, None) for p in images]
            poi_file = ds.poi_file(case) if ds is not None else None
            writer.add_copied_case(case, "Tr", sources, sparse_label_image(sparse, geometry),
                                   poi_file if poi_file is not None and poi_file.is_file() else None)
            writer.put(f"{CLICKS_FOLDER}/{case}.json", points_file)
        if ds is not None:
            copy_held_out_cases(writer, ds)
        cost = annotation_cost(counts)
        writer.extra = {**writer.extra, "click_annotation": {
            "source": "points", "points": str(folder), "radius_mm": radius, **cost, "clicks": f"{CLICKS_FOLDER}/"}}
    return writer.target, cost


def _as_dataset(spec: str) -> Optional[RawDataset]:
    """The raw dataset ``--images`` names, or None for a plain image folder."""
    path = Path(spec)
    if path.is_dir() and not (path / "dataset.json").is_file():
        return None
    return RawDataset.open(spec)


def _case_images(spec: str, ds: Optional[RawDataset], by_stem: Dict[str, Path], case: str) -> List[Path]:
    """The image files of a case, one per channel: the dataset's, or in the folder (``by_stem``: file name
    without extension -> file) nnU-Net naming or one ``<case>.<ext>`` file."""
    if ds is not None:
        files = ds.image_files(case)
        if not files[0].is_file():
            raise PoiNnunetError(f"no image {files[0]} for this points file")
        return files
    channels = []
    while f"{case}_{len(channels):04d}" in by_stem:
        channels.append(by_stem[f"{case}_{len(channels):04d}"])
    if channels:
        return channels
    if case in by_stem:
        return [by_stem[case]]
    raise PoiNnunetError(f"no image {case}_0000 or {case} ({', '.join(VOLUME_SUFFIXES)}) in {spec}")


def _channel_names(args: argparse.Namespace, count: int) -> Dict[str, str]:
    """dataset.json channel names for an image folder: --channel-names, one per channel ("image" for one)."""
    names = args.channel_names or (["image"] if count == 1 else None)
    if names is None or len(names) != count:
        raise option_error("--channel-names", f"the images have {count} channel(s): give one name each")
    return {str(i): n for i, n in enumerate(names)}


def _class_labels(args: argparse.Namespace, ds: Optional[RawDataset]) -> Dict[str, int]:
    """Classes as dataset.json ``labels`` (no "ignore"), from --labels, --labels-from or the image dataset."""
    if args.labels:
        return _consecutive(_parse_labels(args.labels), "--labels")
    if args.labels_from:
        path = Path(args.labels_from)
        source = str(path)
        try:
            meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else RawDataset.open(path).meta
        except (OSError, ValueError) as exc:
            raise fail(source, f"cannot read labels ({exc})") from None
        labels = meta.get("labels") if isinstance(meta, dict) else None
    elif ds is not None:
        source, labels = str(ds.dataset_json), ds.labels
    else:
        raise option_error("--labels", "name the classes (e.g. --labels liver=1 spleen=2) or pass --labels-from")
    if not isinstance(labels, dict) or not all(isinstance(v, int) and v >= 0 for v in labels.values()):
        raise fail(source, "'labels' must map names to integer values (regions cannot be clicked)")
    return _consecutive({k: v for k, v in labels.items() if k != "ignore"}, source)


def _parse_labels(items: Sequence[str]) -> Dict[str, int]:
    """--labels NAME=VALUE ... as a name -> value mapping."""
    labels: Dict[str, int] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if not name or not value.strip().isdigit() or name == "ignore" or name in labels:
            raise option_error("--labels", f"{item!r}: expected NAME=VALUE with a new name (not 'ignore') and an "
                                           "integer value >= 1, e.g. liver=1")
        labels[name] = int(value)
    return labels


def _consecutive(labels: Dict[str, int], source: str) -> Dict[str, int]:
    """Background 0, the given classes, and "label_<v>" for every value missing below the highest."""
    out = {"background": 0, **{k: v for k, v in labels.items() if k != "background"}}
    if labels.get("background", 0) != 0 or len(set(out.values())) != len(out):
        raise fail(source, f"labels {labels} must give background 0 and each class its own value")
    for v in set(range(max(out.values()) + 1)) - set(out.values()):
        out[f"label_{v}"] = v
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def _read_clicks(path: Path, geometry: ImageGeometry, classes: Set[int],
                 image: Path) -> Tuple[List[Click], List[Problem]]:
    """A points file's clicks, every problem naming the file and the point."""
    points, problems = read_poi_file_lenient(path)
    clicks: List[Click] = []
    voxels: Dict[Tuple[int, ...], Poi] = {}
    for p in points:
        where = p.label()
        if p.structure not in classes:
            problems.append(Problem(str(path), f"structure {p.structure} is not a class (classes: "
                                               f"{sorted(classes)}, 0 = background)", where))
        elif len(p.position) != geometry.dim:
            problems.append(Problem(str(path), f"{len(p.position)} coordinates for the {geometry.dim}D image {image}",
                                    where))
        elif not geometry.contains_world(p.position):
            index = np.round(geometry.world_to_index(p.position), 3).tolist()
            problems.append(Problem(str(path), f"position {list(p.position)} mm lies outside the image {image} "
                                               f"(size {list(geometry.size)}, continuous index {index})", where))
        else:
            click = Click(p.structure, tuple(float(c) for c in geometry.world_to_array(p.position)))
            voxel = tuple(min(max(v, 0), s - 1) for v, s in zip(containing_voxel(click), geometry.size[::-1]))
            other = voxels.setdefault(voxel, p)
            if other.structure != p.structure:
                problems.append(Problem(str(path), f"lies in the same voxel as {other.label()}, another class", where))
            clicks.append(click)
    return clicks, problems
