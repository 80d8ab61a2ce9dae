"""``poi_pseudo_masks``: the three-plane pseudo-mask pipeline of seed 002 (issue 12, part 3), stage by stage.

From a point-annotated dataset D (sparse ``labelsTr``, nnU-Net's ``ignore`` label on every voxel nobody clicked):

1. **plan**: one plans identifier per slicing plane (:mod:`.planes`: ``poiPlans_axial``, ``poiPlans_coronal``,
   ``poiPlans_sagittal``; ``poiPlans_image`` alone for 2D images), ``2d`` configuration preprocessed.
   Done when the plans file has the plane's transpose and the data folder holds every training case.
2. **train**: one ``point_sup`` model per plane, ``poi_train D 2d point_sup -p poiPlans_<plane> -f all`` in
   process (:func:`~poi_nnunet.trainer_factory.build_trainer` and ``run_fold``, nnU-Net's end-of-training
   validation skipped: stage 3 predicts every case anyway). Done when ``checkpoint_final.pth`` exists; a
   ``checkpoint_latest.pth`` alone is continued (``--c``).
3. **predict**: every training case with every plane's model (:class:`SegmentationPredictor`, nnU-Net's sliding
   window and mirroring, on the raw images), softmax probabilities brought back onto the raw image's array grid
   as nnU-Net's export does (``convert_predicted_logits_to_segmentation_with_correct_shape``). Per case and
   plane one file; done when every case has its file.
4. **fuse** (:func:`~.fusion.fuse`, ``mean`` or ``vote``) and **smooth** (:func:`~.smoothing.smooth_label_map`, radii
   in mm through the image spacing). When the dataset has dense references (``labelsTr_reference/``, written by
   ``poi_convert clicks``), both fusions are made and every plane's, each fusion's (before and after smoothing)
   Dice against them is written to ``dice.json``. Per case; done when every case has its mask (and Dice row).
5. **write** the new raw dataset (:mod:`.output_dataset`), staged and renamed, so it appears whole or not at all.

Work files, under ``$nnUNet_results/<D>/pseudo_masks/`` (beside the models, so deleting D's results deletes them)::

    probabilities/<plane>/<case>.npz   'probabilities': float16 (C, *image array shape), softmax over D's labels
                                       without 'ignore', in SimpleITK array order ((z, y, x), or (y, x) in 2D)
    probabilities/<plane>/model.json   the checkpoint (size, time) they came from: a retrained model redoes them
    fused/settings.json                smoothing radii the masks were made with (others: the folder is redone)
    fused/<mean|vote>/<case><ending>   fused and smoothed pseudo masks, on the raw image's grid
    fused/dice/<case>.json             per-case Dice rows (only with dense references)
    dice.json                          mean Dice per row over the cases (only with dense references)

Every file is written atomically (temporary name, then rename), so a killed run leaves finished files and no
half-written one; re-running resumes at the first unfinished file. To redo a stage, delete its outputs.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..atomic import atomic_write, atomic_write_image, atomic_write_text
from ..errors import PathLike, PoiNnunetError
from ..evaluation.segmentation import dice, inverse_frequency_weighted_dice
from ..raw_dataset import DENSE_REFERENCE_FOLDER, RawDataset, resolve_raw_dataset
from .fusion import FUSION_METHODS, NNUNET_PROBABILITIES_KEY, FusionMethod, fuse, load_nnunet_probabilities
from .output_dataset import OutputTarget, choose_output, provenance, write_pseudo_mask_dataset
from .planes import PLANE_CONFIGURATION, Plane, dataset_planes, plan_plane, plane_is_planned
from .smoothing import DEFAULT_CLOSING_RADIUS_MM, DEFAULT_OPENING_RADIUS_MM, smooth_label_map

TRAINER = "point_sup"
WORK_FOLDER = "pseudo_masks"
#: Default fusion: the probability mean (measured against ``vote``: see the README's ``poi_pseudo_masks`` section).
DEFAULT_FUSION: FusionMethod = "mean"
STAGES = ("plan", "train", "predict", "fuse", "write")


@dataclass
class PseudoMaskOptions:
    """What the command line sets (defaults are the command's)."""

    fold: str = "all"
    device: str = "cuda"
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    fusion: FusionMethod = DEFAULT_FUSION
    closing_radius_mm: float = DEFAULT_CLOSING_RADIUS_MM
    opening_radius_mm: float = DEFAULT_OPENING_RADIUS_MM
    output_id: Optional[int] = None
    num_processes: int = 8
    num_processes_fingerprint: int = 8
    use_mirroring: bool = True
    progress: bool = True


@dataclass
class PseudoMaskResult:
    """What a run made (or found made) and which stages it skipped."""

    dataset: Path
    work: Path
    planes: List[Plane]
    ran: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    dice: Optional[Dict[str, Any]] = None
    image_dim: int = 3


def run_pseudo_masks(dataset: PathLike, options: PseudoMaskOptions) -> PseudoMaskResult:
    """Run stages 1-5 on ``dataset`` (id, name or folder in ``$nnUNet_raw``), skipping finished ones."""
    from ..inference.model import results_root

    if options.fusion not in FUSION_METHODS:
        raise PoiNnunetError(f"--fusion must be one of {', '.join(FUSION_METHODS)}, got {options.fusion!r}")
    ds = RawDataset.open(resolve_raw_dataset(dataset))
    if ds.ignore_label is None:
        raise PoiNnunetError(f"{ds.dataset_json}: no 'ignore' label, so labelsTr are not sparse; poi_pseudo_masks "
                             "makes masks from clicks (write such a dataset with poi_convert clicks). A densely "
                             "labelled dataset needs no pseudo masks: train it with poi_train D 3d_fullres nnunet")
    cases = ds.case_ids("Tr")
    planes = dataset_planes(ds)
    dim = 2 if planes[0].name == "image" else 3
    if dim == 2:
        print("2D images have one plane: one 2d point_sup model is trained, and its mask is smoothed (no fusion)")
    work = results_root() / ds.path.name / WORK_FOLDER
    settings = _settings(options, planes)
    # decided before any work, so a clash with another dataset is reported before hours of training
    target = choose_output(ds, options.output_id, settings)
    result = PseudoMaskResult(target.path, work, planes, image_dim=dim)

    _stage(result, "plan", stage_plan(ds, planes, cases, options))
    _stage(result, "train", stage_train(ds, planes, options))
    _stage(result, "predict", stage_predict(ds, planes, cases, work, options))
    ran, result.dice = stage_fuse(ds, planes, cases, work, options)
    _stage(result, "fuse", ran)
    _stage(result, "write", stage_write(ds, target, work, options, settings, result.dice, fused_again=ran))
    return result


def _stage(result: PseudoMaskResult, name: str, ran: bool) -> None:
    (result.ran if ran else result.skipped).append(name)


def _settings(options: PseudoMaskOptions, planes: Sequence[Plane]) -> Dict[str, Any]:
    """What the pseudo masks depend on beyond the source data (recorded in the new dataset.json)."""
    return {"fusion": options.fusion if len(planes) > 1 else "single plane",
            "closing_radius_mm": float(options.closing_radius_mm),
            "opening_radius_mm": float(options.opening_radius_mm)}


def _say(stage: str, text: str) -> None:
    print(f"[{stage}] {text}", flush=True)


# ---------------------------------------------------------------------------------------------- 1. plan
def stage_plan(ds: RawDataset, planes: Sequence[Plane], cases: Sequence[str], options: PseudoMaskOptions) -> bool:
    """Plan and preprocess the ``2d`` configuration of every plane not yet planned; True if any was."""
    from ..preprocessing.staging import preprocessed_root

    folder = preprocessed_root() / ds.path.name
    todo = [p for p in planes if not plane_is_planned(folder, p, cases)]
    for p in planes:
        if p not in todo:
            _say("plan", f"skipped {p.plans_name}: planned, {len(cases)} case(s) preprocessed in "
                         f"{folder / p.data_identifier}")
    for p in tqdm(todo, desc="plan planes", unit="plane", disable=not options.progress or len(todo) < 2):
        _say("plan", f"{p.plans_name}: slices along array axis {p.array_axis} (transpose_forward "
                     f"{p.transpose_forward})")
        with _planning_environment():
            plan_plane(ds.path, p, options.num_processes, options.num_processes_fingerprint, options.progress)
    return bool(todo)


@contextlib.contextmanager
def _planning_environment() -> Iterator[None]:
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``: 0 (the CPU setting for small training
    runs) crashes it, and any value would stay in force for training in this process. Planning sees at least 1;
    the thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    saved = os.environ.get("nnUNet_n_proc_DA")
    if saved is not None and saved.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- 2. train
def model_fold_folder(ds: RawDataset, plane: Plane, fold: str) -> Path:
    """``$nnUNet_results/<D>/PoiPointSupTrainer__poiPlans_<plane>__2d/fold_<fold>`` (nnU-Net's layout)."""
    from trainers.registry import trainer_class

    from ..inference.model import results_root

    name = f"{trainer_class(TRAINER).__name__}__{plane.plans_name}__{PLANE_CONFIGURATION}"
    return results_root() / ds.path.name / name / f"fold_{fold}"


def stage_train(ds: RawDataset, planes: Sequence[Plane], options: PseudoMaskOptions) -> bool:
    """Train every plane's model that has no final checkpoint (continuing one that has a latest); True if any."""
    from ..trainer_factory import build_trainer, run_fold

    fold = _fold(options.fold)
    todo = []
    for p in planes:
        folder = model_fold_folder(ds, p, str(fold))
        if (folder / "checkpoint_final.pth").is_file():
            _say("train", f"skipped {p.name}: {folder / 'checkpoint_final.pth'} exists (delete it to retrain)")
        else:
            todo.append(p)
    for p in tqdm(todo, desc="train planes", unit="model", disable=not options.progress):
        resume = (model_fold_folder(ds, p, str(fold)) / "checkpoint_latest.pth").is_file()
        _say("train", f"{'continuing' if resume else 'training'} poi_train {ds.path.name} {PLANE_CONFIGURATION} "
                      f"{TRAINER} -p {p.plans_name} -f {fold}")
        trainer = build_trainer(ds.path.name, PLANE_CONFIGURATION, TRAINER, fold, p.plans_name, options.device,
                                continue_training=resume, epochs=options.epochs,
                                iterations_per_epoch=options.iterations_per_epoch)
        run_fold(trainer, continue_training=resume, validate=False)
    return bool(todo)


def _fold(text: str):
    if str(text) == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise PoiNnunetError(f"fold must be an integer or 'all', got {text!r}") from None


# ---------------------------------------------------------------------------------------------- 3. predict
def probabilities_file(work: Path, plane: Plane, case: str) -> Path:
    return work / "probabilities" / plane.name / f"{case}.npz"


def stage_predict(ds: RawDataset, planes: Sequence[Plane], cases: Sequence[str], work: Path,
                  options: PseudoMaskOptions) -> bool:
    """Write every missing ``probabilities/<plane>/<case>.npz``; True if any was written."""
    ran = False
    for p in planes:
        _forget_other_models_probabilities(ds, p, work, options)
        todo = [c for c in cases if not probabilities_file(work, p, c).is_file()]
        if not todo:
            _say("predict", f"skipped {p.name}: all {len(cases)} case(s) in {work / 'probabilities' / p.name}")
            continue
        if len(todo) < len(cases):
            _say("predict", f"{p.name}: {len(cases) - len(todo)} case(s) already predicted, {len(todo)} to go")
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
    checkpoint = model_fold_folder(ds, plane, str(_fold(options.fold))) / "checkpoint_final.pth"
    stat = checkpoint.stat()
    return {"checkpoint": str(checkpoint), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "use_mirroring": bool(options.use_mirroring)}


def _forget_other_models_probabilities(ds: RawDataset, plane: Plane, work: Path, options: PseudoMaskOptions) -> None:
    """A retrained plane model (its checkpoint deleted and made again) makes its probabilities and every fused mask
    stale: delete them, then record the model the next probabilities come from (``probabilities/<plane>/model.json``).
    Probabilities without a record (an older run) are kept and the model recorded."""
    folder = work / "probabilities" / plane.name
    record = folder / "model.json"
    stamp = _model_stamp(ds, plane, options)
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != stamp:
        _say("predict", f"{plane.name}: the model changed since {folder} was predicted; predicting again, and "
                        f"fusing again")
        shutil.rmtree(folder)
        if (work / "fused").is_dir():
            shutil.rmtree(work / "fused")
    folder.mkdir(parents=True, exist_ok=True)
    if not record.is_file() or json.loads(record.read_text(encoding="utf-8")) != stamp:
        atomic_write_text(record, json.dumps(stamp, indent=1) + "\n")


def _plane_predictor(ds: RawDataset, plane: Plane, options: PseudoMaskOptions):
    from ..inference.model import predictor_for
    from ..trained_models import find_model

    model = find_model(ds.path.name, PLANE_CONFIGURATION, TRAINER, plane.plans_name)
    return predictor_for(model, [_fold(options.fold)], device=options.device, use_mirroring=options.use_mirroring)


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


# ---------------------------------------------------------------------------------------------- 4. fuse
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
        _say("fuse", f"{fused} was made with other settings ({settings_file}); making it again")
        shutil.rmtree(fused)
    fused.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_file, json.dumps(settings, indent=1) + "\n")

    def done(case: str) -> bool:
        masks = all((fused / m / f"{case}{ds.file_ending}").is_file() for m in methods)
        return masks and (not has_references or (fused / "dice" / f"{case}.json").is_file())

    todo = [c for c in cases if not done(c)]
    if not todo:
        _say("fuse", f"skipped: all {len(cases)} case(s) in {fused / methods[0]}")
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


# ---------------------------------------------------------------------------------------------- 5. write
def stage_write(ds: RawDataset, target: OutputTarget, work: Path, options: PseudoMaskOptions,
                settings: Dict[str, Any], dice_summary: Optional[Dict[str, Any]], fused_again: bool = False) -> bool:
    """Write the new raw dataset unless it exists (made from ``ds`` with ``settings``); True if written.
    ``fused_again``: the masks were remade in this run (an existing dataset then holds older ones: say so)."""
    if target.exists:
        _say("write", f"skipped: {target.path} exists, made from {ds.path.name} with these settings")
        if fused_again:
            _say("write", f"WARNING: the pseudo masks were made again in this run, {target.path} holds the earlier "
                          "ones; it is not overwritten (a model may have been trained on it): delete it, or pass "
                          "another --output-id, to write the new masks")
        return False
    method = options.fusion if (work / "fused" / options.fusion).is_dir() else next(
        m for m in FUSION_METHODS if (work / "fused" / m).is_dir())
    started = time.monotonic()
    meta = provenance(ds, settings, work, dice_summary)
    write_pseudo_mask_dataset(ds, target.path, work / "fused" / method, meta, progress=options.progress)
    _say("write", f"{target.path} written in {time.monotonic() - started:.1f} s")
    return True
