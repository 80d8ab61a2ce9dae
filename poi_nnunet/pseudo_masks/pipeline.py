"""``poi_pseudo_masks``: the three-plane pseudo-mask pipeline of seed 002 (issue 12, part 3), stage by stage.

From a point-annotated dataset D (sparse ``labelsTr``, nnU-Net's ``ignore`` label on every voxel nobody clicked),
five stages, each in its own module (1-2 :mod:`.plane_models`, 3 :mod:`.plane_prediction`, 4 :mod:`.fused_masks`,
5 here with :mod:`.output_dataset`); this module runs them in order:

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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import PathLike, PoiNnunetError
from ..raw_dataset import RawDataset, resolve_raw_dataset
from .fused_masks import stage_fuse
from .fusion import FUSION_METHODS
from .options import DEFAULT_FUSION, PseudoMaskOptions, say
from .output_dataset import OutputTarget, choose_output, provenance, write_pseudo_mask_dataset
from .plane_models import stage_plan, stage_train
from .plane_prediction import stage_predict
from .planes import Plane, dataset_planes

__all__ = ["DEFAULT_FUSION", "PseudoMaskOptions", "PseudoMaskResult", "STAGES", "WORK_FOLDER", "run_pseudo_masks"]

WORK_FOLDER = "pseudo_masks"
STAGES = ("plan", "train", "predict", "fuse", "write")


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


def stage_write(ds: RawDataset, target: OutputTarget, work: Path, options: PseudoMaskOptions,
                settings: Dict[str, Any], dice_summary: Optional[Dict[str, Any]], fused_again: bool = False) -> bool:
    """Write the new raw dataset unless it exists (made from ``ds`` with ``settings``); True if written.
    ``fused_again``: the masks were remade in this run (an existing dataset then holds older ones: say so)."""
    if target.exists:
        say("write", f"skipped: {target.path} exists, made from {ds.path.name} with these settings")
        if fused_again:
            say("write", f"WARNING: the pseudo masks were made again in this run, {target.path} holds the earlier "
                "ones; it is not overwritten (a model may have been trained on it): delete it, or pass "
                "another --output-id, to write the new masks")
        return False
    method = options.fusion if (work / "fused" / options.fusion).is_dir() else next(
        m for m in FUSION_METHODS if (work / "fused" / m).is_dir())
    started = time.monotonic()
    meta = provenance(ds, settings, work, dice_summary)
    write_pseudo_mask_dataset(ds, target.path, work / "fused" / method, meta, progress=options.progress)
    say("write", f"{target.path} written in {time.monotonic() - started:.1f} s")
    return True
