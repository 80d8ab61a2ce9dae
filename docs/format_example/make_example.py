"""Write the example datasets of ``docs/format.md`` (run from anywhere: ``python docs/format_example/make_example.py``).

It uses SimpleITK and json only, so it doubles as a template for writing a
dataset in the unified raw format without this project's converters. The
images are 8x8x8 (8x8 for the 2D one) voxels, so the examples stay a few
kilobytes. The repository keeps only the json files; the images are
generated (binary files are not tracked). ``tests/test_format_document.py``
writes the examples with this script, checks that its json is exactly what the
folder holds, that the datasets pass ``poi_convert validate``, and that
docs/format.md shows their json verbatim.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent


def _image(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float]) -> sitk.Image:
    """``array`` is in numpy order ([z,] y, x); spacing and origin in ITK order (x, y[, z]), mm."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image  # direction: identity, so the index axes run along L, P (and S)


def _write_image(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def _dumps(data: Dict[str, Any]) -> str:
    """json with one point (and one pair) per line, as the examples are shown in format.md."""
    lines = ["{"]
    items = list(data.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
            inner = ",\n".join("    " + json.dumps(v) for v in value)
            lines.append(f'  "{key}": [\n{inner}\n  ]{comma}')
        elif isinstance(value, dict) and value:
            inner = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            lines.append(f'  "{key}": {{\n{inner}\n  }}{comma}')
        else:
            lines.append(f'  "{key}": {json.dumps(value)}{comma}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _write_json(data: Dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(data), encoding="utf-8")


def _points(image: sitk.Image, entries: List[tuple]) -> Dict[str, Any]:
    """(structure, poi, continuous ITK index) -> a points file, positions in LPS mm."""
    points = []
    for structure, poi, index in entries:
        position = image.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in index))
        points.append({"structure": structure, "poi": poi, "position": [round(c, 6) for c in position]})
    return {"coordinate_system": "LPS", "points": points}


# ---------------------------------------------------------------------------- 3D: segmentation + points
def spine_example(root: Path) -> None:
    """Two vertebrae (labels L1, L2) with three points each, a second channel that is a mask, a test case."""
    ds = root / "Dataset999_Example"
    spacing, origin = (1.5, 1.5, 2.0), (-5.25, -5.25, 100.0)
    _write_json({
        "channel_names": {"0": "CT", "1": "noNorm"},
        "labels": {"background": 0, "L1": 1, "L2": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
        "pois": {"1": "vertebral body centre", "2": "left transverse process", "3": "right transverse process"},
        "poi_mirror_pairs": [[2, 3]],
        "poi_source": "placed by hand in 3D Slicer",
    }, ds / "dataset.json")

    # Every point of every case, as (structure, poi, continuous index x, y, z). In LPS, +x points to the
    # patient's left, +y to the back, +z up: the left process has the larger x, L1 lies above L2.
    cases = {
        ("Tr", "spine_001"): [(1, 1, (3.5, 2.5, 5.5)), (1, 2, (6, 4.5, 5.5)), (1, 3, (1, 4.5, 5.5)),
                              (2, 1, (3.5, 2.5, 1.5)), (2, 2, (6, 4.5, 1.5)), (2, 3, (1, 4.5, 1.5))],
        # the right process of L2 was not annotated in this case: its point is simply not there
        ("Tr", "spine_002"): [(1, 1, (3, 2.5, 6)), (1, 2, (5.5, 4.5, 6)), (1, 3, (0.5, 4.5, 6)),
                              (2, 1, (3, 2.5, 2)), (2, 2, (5.5, 4.5, 2))],
        ("Ts", "spine_003"): [(1, 1, (4, 3, 5)), (1, 2, (6.5, 5, 5)), (1, 3, (1.5, 5, 5)),
                              (2, 1, (4, 3, 1)), (2, 2, (6.5, 5, 1)), (2, 3, (1.5, 5, 1))],
    }
    for (split, case), entries in cases.items():
        label = np.zeros((8, 8, 8), dtype=np.uint8)      # [z, y, x]
        label[4:8, 1:7, 0:8] = 1                          # L1: upper half (larger z = superior)
        label[0:4, 1:7, 0:8] = 2                          # L2
        ct = np.where(label > 0, 400, -1000).astype(np.int16)
        subregion = np.zeros_like(label)                  # an input mask: 1 body, 2 posterior elements
        subregion[:, 1:4, 2:6] = 1
        subregion[:, 4:7, :] = 2
        image = _image(ct, spacing, origin)
        _write_image(image, ds / f"images{split}" / f"{case}_0000.nii.gz")
        _write_image(_image(subregion, spacing, origin), ds / f"images{split}" / f"{case}_0001.nii.gz")
        _write_image(_image(label, spacing, origin), ds / f"labels{split}" / f"{case}.nii.gz")
        _write_json(_points(image, entries), ds / f"pois{split}" / f"{case}.json")


# ---------------------------------------------------------------------------- 2D: landmarks only
def landmarks_only_example(root: Path) -> None:
    """A 2D X-ray with two landmarks and no segmentation: no labelsTr, structure 0."""
    ds = root / "Dataset998_LandmarksOnly"
    _write_json({
        "channel_names": {"0": "X-ray"},
        "labels": {"background": 0},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "pois": {"1": "tip of the middle finger", "2": "centre of the wrist"},
        "poi_source": "clicked by hand in LabelMe",
    }, ds / "dataset.json")
    xray = np.zeros((8, 8), dtype=np.uint8)               # [y, x]
    xray[1:7, 3:5] = 200
    image = _image(xray, (0.5, 0.5), (0.0, 0.0))
    _write_image(image, ds / "imagesTr" / "hand_001_0000.nii.gz")
    _write_json(_points(image, [(0, 1, (3.5, 1)), (0, 2, (4, 6.5))]), ds / "poisTr" / "hand_001.json")


# ---------------------------------------------------------------------------- 3D: sparse labels (point supervision)
def sparse_labels_example(root: Path) -> None:
    """Clicked voxels only: every voxel nobody annotated carries the 'ignore' label (the highest value)."""
    ds = root / "Dataset997_SparseLabels"
    _write_json({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "left_kidney": 1, "right_kidney": 2, "ignore": 3},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "pois": {"1": "kidney centre"},
        "structure_mirror_pairs": [[1, 2]],
        "poi_source": "registration of an annotated atlas",
    }, ds / "dataset.json")
    spacing, origin = (1.0, 1.0, 1.0), (10.0, -20.0, 5.0)
    label = np.full((8, 8, 8), 3, dtype=np.uint8)         # [z, y, x]; 3 = ignore: not annotated
    label[4, 4, 6] = 1                                    # one click in the left kidney (larger x)
    label[4, 4, 1] = 2                                    # one click in the right kidney
    label[0, 0, 0] = label[7, 7, 7] = label[0, 7, 3] = 0  # three background clicks
    ct = np.full((8, 8, 8), -100, dtype=np.int16)
    ct[2:7, 3:6, 5:8] = 30
    ct[2:7, 3:6, 0:3] = 30
    image = _image(ct, spacing, origin)
    _write_image(image, ds / "imagesTr" / "abdomen_001_0000.nii.gz")
    _write_image(_image(label, spacing, origin), ds / "labelsTr" / "abdomen_001.nii.gz")
    _write_json(_points(image, [(1, 1, (6, 4, 4)), (2, 1, (1, 4, 4))]), ds / "poisTr" / "abdomen_001.json")


def write_examples(root: Path = HERE) -> List[Path]:
    """Write every example dataset under ``root``; return their folders."""
    spine_example(root)
    landmarks_only_example(root)
    sparse_labels_example(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("Dataset"))


if __name__ == "__main__":
    for folder in write_examples():
        print(f"wrote {folder}")
