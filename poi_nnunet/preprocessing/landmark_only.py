"""Label maps for a landmark-only dataset (no labelsTr), which nnU-Net cannot plan without.

The raw folder is never touched. Two kinds are written on the preprocessed side:

* *background* maps (all 0, the only label such a dataset declares) become
  ``gt_segmentations/<case>``, nnU-Net's own copy of the references, and the
  preprocessed ``dataset.json`` points nnU-Net's preprocessor at them through
  its ``dataset`` key (paths through ``$nnUNet_preprocessed``, so the folder
  can move). Training targets stay valid labels.
* *foreground* maps (all 1) only feed nnU-Net's fingerprint, whose intensity
  statistics are taken over foreground: here the whole image is of interest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import SimpleITK as sitk

from ..atomic import atomic_write_image, atomic_write_text
from ..geometry import ImageGeometry
from ..raw_dataset import RawDataset


def write_constant_labels(ds: RawDataset, folder: Path, value: int) -> Dict[str, str]:
    """One label map per training case, on the case's grid, filled with ``value``; returns case -> path."""
    out = {}
    for case in ds.case_ids("Tr"):
        geo = ImageGeometry.from_file(ds.image_files(case)[0])
        image = sitk.Image(list(geo.size), sitk.sitkUInt8)
        if value:
            image = image + value
        geo.apply_to(image)
        path = folder / f"{case}{ds.file_ending}"
        atomic_write_image(path, image)
        out[case] = str(path)
    return out


def point_preprocessor_at_labels(dataset_json_file: Path, ds: RawDataset, dataset_name: str) -> None:
    """Add nnU-Net's ``dataset`` key: raw images, labels from ``gt_segmentations``."""
    meta = json.loads(dataset_json_file.read_text(encoding="utf-8"))
    meta["dataset"] = {
        case: {
            "images": [f"images{'Tr'}/{p.name}" for p in ds.image_files(case)],
            "label": f"$nnUNet_preprocessed/{dataset_name}/gt_segmentations/{case}{ds.file_ending}",
        }
        for case in ds.case_ids("Tr")
    }
    atomic_write_text(dataset_json_file, json.dumps(meta, indent=2) + "\n")
