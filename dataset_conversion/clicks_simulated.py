"""Source (b) of `poi_convert clicks`: clicks simulated on a densely labelled dataset (--from-dataset).

The array work (drawing and painting clicks) is click_simulation.py's; this
module checks the options, reads each dense case and writes the sparse dataset,
with the dense labels kept in labelsTr_reference/ for evaluation.
"""
from __future__ import annotations

import argparse
import math
import zlib
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet, write_poi_file
from poi_nnunet.raw_dataset import DENSE_REFERENCE_FOLDER
from poi_nnunet.raw_format_checks import check_raw_dataset

from ._common import fail
from .click_simulation import Click, annotated_voxels, draw_clicks, paint_clicks
from .clicks_writing import (CLICKS_FOLDER, ClickWriter, annotation_cost, click_writer, copy_held_out_cases,
                             option_error, sparse_label_image)

REFERENCE_FOLDER = DENSE_REFERENCE_FOLDER
SIMULATION_DEFAULTS = {"clicks_per_structure": 5, "background_clicks": 10, "seed": 0, "interior_fraction": 0.5,
                       "background_margin_mm": 5.0}


def simulate(args: argparse.Namespace, radius: float) -> Tuple[Path, Dict[str, Any]]:
    """Write the dataset of clicks simulated on ``args.from_dataset``; return its folder and the labelling cost."""
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in SIMULATION_DEFAULTS.items()}
    margin = opts["background_margin_mm"]
    checks = {"clicks_per_structure": opts["clicks_per_structure"] >= 1,
              "background_clicks": opts["background_clicks"] >= 0, "seed": opts["seed"] >= 0,
              "interior_fraction": 0 < opts["interior_fraction"] <= 1,
              "background_margin_mm": math.isfinite(margin) and margin >= 0}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise option_error("--" + bad[0].replace("_", "-"), f"out of range: {opts[bad[0]]} (clicks per structure "
                           ">= 1, background clicks and seed >= 0, interior fraction in (0, 1], margin >= 0)")
    ds = check_raw_dataset(args.from_dataset, progress=False)
    if not ds.has_labels():
        raise fail(ds.path, "has no labelsTr/: clicks are simulated from dense segmentations")
    if ds.ignore_label is not None:
        raise fail(ds.dataset_json, "already has an 'ignore' label (sparse); simulate from a densely labelled dataset")
    writer = click_writer(args, ds.channel_names, ds.labels, ds, ds.file_ending)
    ignore = writer.labels["ignore"]
    counts = []
    with writer:
        for case in ds.case_ids("Tr"):
            label_file = ds.label_file(case)
            dense_image = sitk.ReadImage(str(label_file))
            geometry = ImageGeometry.from_image(dense_image)
            dense = sitk.GetArrayFromImage(dense_image).astype(np.int32)
            spacing = geometry.spacing[::-1]  # numpy axis order
            rng = np.random.default_rng(np.random.SeedSequence([opts["seed"], zlib.crc32(case.encode("utf-8"))]))
            clicks = draw_clicks(dense, spacing, opts["clicks_per_structure"], opts["background_clicks"], rng,
                                 opts["interior_fraction"], opts["background_margin_mm"])
            sparse = paint_clicks(dense.shape, spacing, clicks, radius, ignore, truth=dense)
            counts.append(annotated_voxels(sparse, ignore))
            poi_file = ds.poi_file(case)
            writer.add_copied_case(case, "Tr", ds.image_files(case), sparse_label_image(sparse, geometry),
                                   poi_file if poi_file.is_file() else None)
            writer.put(f"{REFERENCE_FOLDER}/{case}{ds.file_ending}", label_file)
            _write_clicks_file(writer, case, clicks, geometry)
        copy_held_out_cases(writer, ds)
        cost = annotation_cost(counts)
        writer.extra = {**writer.extra, "click_annotation": {
            "source": "simulated", "from_dataset": str(ds.path), **opts, "radius_mm": radius, **cost,
            "dense_references": f"{REFERENCE_FOLDER}/", "clicks": f"{CLICKS_FOLDER}/"}}
    return writer.target, cost


def _write_clicks_file(writer: ClickWriter, case: str, clicks: Sequence[Click], geometry: ImageGeometry) -> None:
    """clicksTr/<case>.json: the clicks in world mm, structure = class, poi = click number within the class."""
    numbers: Dict[int, int] = {}
    points = []
    for click in clicks:
        numbers[click.label] = numbers.get(click.label, 0) + 1
        world = geometry.array_to_world(np.asarray(click.array_index, dtype=np.float64))
        points.append(Poi(click.label, numbers[click.label], tuple(float(c) for c in world)))
    write_poi_file(writer.staging / CLICKS_FOLDER / f"{case}.json", PoiSet(points))
