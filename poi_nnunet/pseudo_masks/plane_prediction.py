"""Stage 3 of ``poi_pseudo_masks``: every training case predicted by every plane's model, as softmax
probabilities on the raw image's grid, one file per case and plane, and a record of the model they came from."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..errors import PoiNnunetError
from ..raw_dataset import RawDataset
from .fusion import NNUNET_PROBABILITIES_KEY
from .options import PseudoMaskOptions, parse_fold, say
from .plane_models import TRAINER, model_fold_folder
from .planes import PLANE_CONFIGURATION, Plane


def probabilities_file(work: Path, plane: Plane, case: str) -> Path:
    return work / "probabilities" / plane.name / f"{case}.npz"


def stage_predict(ds: RawDataset, planes: Sequence[Plane], cases: Sequence[str], work: Path,
                  options: PseudoMaskOptions) -> bool:
    """Write every missing ``probabilities/<plane>/<case>.npz``; True if any was written."""
    ran = False
    for p in planes:
        _drop_stale_probabilities(ds, p, work, options)
        todo = [c for c in cases if not probabilities_file(work, p, c).is_file()]
        if not todo:
            say("predict", f"skipped {p.name}: all {len(cases)} case(s) in {work / 'probabilities' / p.name}")
            continue
        if len(todo) < len(cases):
            say("predict", f"{p.name}: {len(cases) - len(todo)} case(s) already predicted, {len(todo)} to go")
        predictor = _plane_predictor(ds, p, options)
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        preprocessor = DefaultPreprocessor(verbose=False)
        for case in tqdm(todo, desc=f"predict {p.name}", unit="case", disable=not options.progress):
            probabilities = predict_probabilities(predictor, preprocessor, ds.image_files(case))
            _save_probabilities(probabilities_file(work, p, case), probabilities)
        ran = True
    return ran


def _model_stamp(ds: RawDataset, plane: Plane, options: PseudoMaskOptions) -> Dict[str, Any]:
    """What a plane's probabilities depend on: its checkpoint (path, size, modification time) and mirroring."""
    checkpoint = model_fold_folder(ds, plane, str(parse_fold(options.fold))) / "checkpoint_final.pth"
    stat = checkpoint.stat()
    return {"checkpoint": str(checkpoint), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "use_mirroring": bool(options.use_mirroring)}


def _drop_stale_probabilities(ds: RawDataset, plane: Plane, work: Path, options: PseudoMaskOptions) -> None:
    """A retrained plane model (its checkpoint deleted and made again) makes its probabilities and every fused mask
    stale: delete them, then record the model the next probabilities come from (``probabilities/<plane>/model.json``).
    Probabilities without a record (an older run) are kept and the model recorded."""
    folder = work / "probabilities" / plane.name
    record = folder / "model.json"
    stamp = _model_stamp(ds, plane, options)
    recorded = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    if recorded == stamp:
        return
    if recorded is not None:
        say("predict", f"{plane.name}: the model changed since {folder} was predicted; predicting again, and "
            f"fusing again")
        shutil.rmtree(folder)
        if (work / "fused").is_dir():
            shutil.rmtree(work / "fused")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(stamp, indent=1) + "\n")


def _plane_predictor(ds: RawDataset, plane: Plane, options: PseudoMaskOptions):
    from ..inference.model import predictor_for
    from ..trained_models import find_model

    model = find_model(ds.path.name, PLANE_CONFIGURATION, TRAINER, plane.plans_name)
    return predictor_for(model, [parse_fold(options.fold)], device=options.device, use_mirroring=options.use_mirroring)


def predict_probabilities(predictor, preprocessor, files: Sequence[Path]) -> np.ndarray:
    """Softmax probabilities ``(C, *image array shape)`` float32 of one raw case, on its own grid.

    ``C`` counts the labels without ``ignore``; the array shape is SimpleITK's (``(z, y, x)``, or ``(y, x)`` for
    a 2D image, whose leading unit axis nnU-Net adds is dropped).
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from ..geometry import ImageGeometry, PreprocessedSpace

    names = [str(f) for f in files]
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    data, _, properties = preprocessor.run_case(names, None, pm, cm, predictor.dataset_json)
    raw = ImageGeometry.from_file(names[0])
    space = PreprocessedSpace.from_nnunet_properties(properties, pm.transpose_forward, data.shape[1:], raw=raw)
    prediction = predictor.predict_case(data, space)
    _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        prediction.segmentation_logits, pm, cm, predictor.label_manager, properties, return_probabilities=True)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    shape = tuple(int(s) for s in raw.size[::-1])
    if probabilities.shape[1:] != shape:
        # a 2D image: nnU-Net predicts (C, 1, y, x); only that unit axis may be dropped
        if not (len(shape) == 2 and probabilities.ndim == 4 and probabilities.shape[1] == 1
                and probabilities.shape[2:] == shape):
            raise PoiNnunetError(f"{names[0]}: prediction of shape {probabilities.shape[1:]} does not fit the image "
                                 f"array {shape}")
        probabilities = probabilities[:, 0]
    return probabilities


def _save_probabilities(path: Path, probabilities: np.ndarray) -> None:
    """float16 halves the files; softmax values keep ~3 significant digits, plenty to fuse them."""
    array = probabilities.astype(np.float16)
    atomic_write(path, lambda p: np.savez_compressed(p, **{NNUNET_PROBABILITIES_KEY: array}), suffix_hint=".npz")
