"""Stage 4 of ``poi_pseudo_masks``: the planes' probabilities fused and smoothed into one mask per case, and,
where the dataset keeps dense references, every plane's and fusion's Dice against them (``dice.json``)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..atomic import atomic_write_image, atomic_write_text
from ..errors import PoiNnunetError
from ..evaluation.segmentation import dice, inverse_frequency_weighted_dice
from ..raw_dataset import DENSE_REFERENCE_FOLDER, RawDataset
from .fusion import FUSION_METHODS, fuse, load_nnunet_probabilities
from .options import PseudoMaskOptions, say
from .plane_prediction import probabilities_file
from .planes import Plane
from .smoothing import smooth_label_map


def stage_fuse(ds: RawDataset, planes: Sequence[Plane], cases: Sequence[str], work: Path,
               options: PseudoMaskOptions) -> Tuple[bool, Optional[Dict[str, Any]]]:
    """Fuse and smooth every case not yet done; return (whether any was, the Dice summary or None)."""
    fused = work / "fused"
    references = ds.path / DENSE_REFERENCE_FOLDER
    has_references = references.is_dir() and all((references / f"{c}{ds.file_ending}").is_file() for c in cases)
    methods = list(FUSION_METHODS) if has_references and len(planes) > 1 else [options.fusion]
    settings = {"closing_radius_mm": float(options.closing_radius_mm),
                "opening_radius_mm": float(options.opening_radius_mm), "planes": [p.name for p in planes]}
    settings_file = fused / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text(encoding="utf-8")) != settings:
        say("fuse", f"{fused} was made with other settings ({settings_file}); making it again")
        shutil.rmtree(fused)
    fused.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_file, json.dumps(settings, indent=1) + "\n")

    def done(case: str) -> bool:
        masks = all((fused / m / f"{case}{ds.file_ending}").is_file() for m in methods)
        return masks and (not has_references or (fused / "dice" / f"{case}.json").is_file())

    todo = [c for c in cases if not done(c)]
    if not todo:
        say("fuse", f"skipped: all {len(cases)} case(s) in {fused / methods[0]}")
    foreground = [int(v) for k, v in ds.labels.items() if k not in ("background", "ignore") and isinstance(v, int)]
    for case in tqdm(todo, desc="fuse + smooth", unit="case", disable=not options.progress):
        image = _read_header_image(ds.image_files(case)[0])
        spacing = tuple(float(s) for s in image.GetSpacing())[::-1]  # numpy axis order
        probabilities = [load_nnunet_probabilities(probabilities_file(work, p, case)) for p in planes]
        reference = _read_array(references / f"{case}{ds.file_ending}") if has_references else None
        rows: Dict[str, Dict[str, Any]] = {}
        if reference is not None:
            for p, probs in zip(planes, probabilities):
                rows[p.name] = _dice_row(reference, np.argmax(probs, axis=0))
        for method in methods:
            raw = fuse(probabilities, method)
            smoothed = smooth_label_map(raw, spacing, foreground, options.closing_radius_mm,
                                        options.opening_radius_mm)
            _write_label(fused / method / f"{case}{ds.file_ending}", smoothed, image)
            if reference is not None:
                rows[f"{method} fused"] = _dice_row(reference, raw)
                rows[f"{method} fused + smoothed"] = _dice_row(reference, smoothed)
        if reference is not None:
            atomic_write_text(fused / "dice" / f"{case}.json", json.dumps(rows, indent=1) + "\n")
    summary = _dice_summary(fused / "dice", cases, work / "dice.json") if has_references else None
    return bool(todo), summary


def _read_header_image(path: Path) -> sitk.Image:
    """The image (its geometry is what the label is written with)."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise PoiNnunetError(f"{path}: cannot be read ({str(exc).strip().splitlines()[-1]})") from None


def _read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(_read_header_image(path))


def _write_label(path: Path, labels: np.ndarray, image: sitk.Image) -> None:
    out = sitk.GetImageFromArray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))
    out.CopyInformation(image)
    atomic_write_image(path, out)


def _dice_row(reference: np.ndarray, predicted: np.ndarray) -> Dict[str, Any]:
    """Dice per foreground label of the reference (and of the prediction), their mean, and seed 002's
    inverse-frequency-weighted Dice."""
    labels = sorted((set(np.unique(reference).tolist()) | set(np.unique(predicted).tolist())) - {0})
    per_label = {int(v): dice(reference == v, predicted == v) for v in labels}
    counts = {int(v): int((reference == v).sum()) for v in labels}
    values = [d for d in per_label.values() if not math.isnan(d)]
    return {"dice": float(np.mean(values)) if values else float("nan"),
            "weighted_dice": inverse_frequency_weighted_dice(per_label, counts),
            "per_label": {str(k): v for k, v in per_label.items()}}


def _dice_summary(folder: Path, cases: Sequence[str], out: Path) -> Dict[str, Any]:
    """Mean of each row's Dice over the cases, written to ``out``."""
    per_case = {c: json.loads((folder / f"{c}.json").read_text(encoding="utf-8")) for c in cases}
    rows = list(next(iter(per_case.values())))
    summary = {"reference": DENSE_REFERENCE_FOLDER, "cases": len(cases), "rows": {}}
    for row in rows:
        dices = [per_case[c][row]["dice"] for c in cases if not _nan(per_case[c][row]["dice"])]
        weighted = [per_case[c][row]["weighted_dice"] for c in cases if not _nan(per_case[c][row]["weighted_dice"])]
        summary["rows"][row] = {"dice": float(np.mean(dices)) if dices else None,
                                "weighted_dice": float(np.mean(weighted)) if weighted else None}
    atomic_write_text(out, json.dumps(summary, indent=1) + "\n")
    return summary


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
