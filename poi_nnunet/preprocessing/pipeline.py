"""``poi_plan_and_preprocess``: validate, fingerprint, plan and preprocess one dataset.

Order: validate the raw dataset (unless an unchanged, already validated
fingerprint is reused), nnU-Net's fingerprint plus the POI fingerprint,
cleaning, nnU-Net's planning with ``poi`` blocks, nnU-Net's preprocessing with
POI files and uv maps. A ``splits_final.json`` that the raw dataset ships
(``poi_augment`` writes one) is copied beside the plans when the preprocessed
folder has none. Everything is built in a staging folder and published at the end,
so a failure leaves the previous state (or nothing) behind, never a half.
"""
from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..atomic import atomic_write_text
from ..errors import PathLike, PoiNnunetError
from ..raw_dataset import RawDataset, raw_root, resolve_raw_dataset
from ..raw_format_checks import check_raw_dataset
from .landmark_only import point_preprocessor_at_labels, write_constant_labels
from .staging import check_writable, preprocessed_root, publish, staged_preprocessed

DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
# nnU-Net's defaults for -np per configuration
DEFAULT_PROCESSES = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
CLEANING_REPORT = "poi_cleaning.json"
# nnU-Net reads its cross-validation split from the preprocessed folder; a raw dataset may ship one
# (poi_augment's keeps augmented samples in their sources' folds)
SPLITS_FILE = "splits_final.json"
SUPPORTED_READERS = ("SimpleITKIO", "NaturalImage2DIO")


def plan_and_preprocess(dataset: PathLike, configurations: Sequence[str] = DEFAULT_CONFIGURATIONS,
                        num_processes: Optional[Sequence[int]] = None, num_processes_fingerprint: int = 8,
                        verify_dataset_integrity: bool = False, gpu_memory_target: Optional[float] = None,
                        clean: bool = False, preprocess: bool = True, progress: bool = True,
                        planner_class: Optional[type] = None, plans_name: Optional[str] = None) -> Path:
    """Plan and preprocess ``dataset`` (id, name or folder in ``$nnUNet_raw``); return its preprocessed folder.

    ``planner_class`` (a :class:`~planners.experiment_planner.PoiExperimentPlanner` subclass) and ``plans_name``
    (default ``poiPlans``) plan under another identifier beside the default plans, e.g. the per-plane plans of
    ``poi_pseudo_masks`` (a fixed ``transpose_forward``); both fingerprints stay shared.
    """
    ds = RawDataset.open(resolve_raw_dataset(dataset))
    _check_in_raw_root(ds)
    processes = _processes_per_configuration(configurations, num_processes)
    root = preprocessed_root()
    check_writable(root)
    _check_reader(ds)
    # planners and nnU-Net import torch: loaded once the cheap input checks passed, so those errors come fast
    from planners.experiment_planner import PLANS_IDENTIFIER, PoiExperimentPlanner
    from planners.poi_fingerprint import FINGERPRINT_FILE, load_fingerprint, source_stamp

    plans_name = plans_name or PLANS_IDENTIFIER
    planner_class = planner_class or PoiExperimentPlanner

    target = root / ds.path.name
    stamp = source_stamp(ds)
    previous = load_fingerprint(target / FINGERPRINT_FILE)
    reuse = (not clean and previous is not None and previous.get("source_stamp") == stamp
             and (target / "dataset_fingerprint.json").is_file())
    if reuse:
        print(f"Raw dataset unchanged since its fingerprint was made (and validated): reusing {target}")
    if not reuse or verify_dataset_integrity:
        print(f"Validating {ds.path} ...")
        check_raw_dataset(ds.path, progress=progress)
    if verify_dataset_integrity:
        _nnunet_integrity_check(ds, num_processes_fingerprint)

    with staged_preprocessed(ds.path.name) as staging:
        keep = ["dataset_fingerprint.json", FINGERPRINT_FILE] if reuse else []
        for name in keep + [f"{plans_name}.json"]:  # nnU-Net keeps extra configurations of old plans
            if (target / name).is_file():
                shutil.copy2(target / name, staging / name)
        _stage_raw_splits(ds, staging, target)
        produced = _run_staged(ds, staging, stamp, reuse, processes if preprocess else {},
                               num_processes_fingerprint, gpu_memory_target, progress, planner_class, plans_name)
        publish(staging, target, produced)
    _drop_stale_field_of_view_plans(target, plans_name, produced)
    print(f"Plans: {target / (plans_name + '.json')}")
    print(f"Done: {target}")
    return target


def _drop_stale_field_of_view_plans(target: Path, plans_name: str, published: Sequence[str]) -> None:
    """Remove field-of-view plans (``poiPlans_fov3.json``) that this planning did not write: planned before for
    scans that needed more fields of view (or any), they would train a model on channels and extents the
    current plans no longer have. Trained models keep their own copy of the plans in the results folder."""
    from ..plan import FieldOfView

    for path in sorted(target.glob(f"{glob.escape(plans_name)}_*.json")):
        if path.name not in published and FieldOfView.is_plans_name(path.stem, plans_name):
            path.unlink()
            print(f"Removed {path.name}: a field of view of an earlier planning, not of these plans")


def _run_staged(ds: RawDataset, staging: Path, stamp: str, reuse: bool, processes: Dict[str, int],
                num_processes_fingerprint: int, gpu_memory_target: Optional[float], progress: bool,
                planner_class: type, plans_name: str) -> List[str]:
    from planners.cleaning import MIN_VOXEL_DIAGONALS, flag_far_pois, flagged_keys, surface_thresholds
    from planners.fingerprint import PoiFingerprintExtractor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .preprocessor import PoiPreprocessor
    from ..plan import COARSE_CONFIGURATION

    name = ds.path.name
    landmark_only = not ds.has_labels()
    foreground = None
    if landmark_only:
        print("Landmark-only dataset: writing background label maps for nnU-Net (raw folder untouched)")
        write_constant_labels(ds, staging / "gt_segmentations", 0)
        if not reuse:  # only nnU-Net's fingerprint reads them
            foreground = write_constant_labels(ds, staging.parent / ".foreground_labels", 1)

    print("Fingerprint extraction...")
    extractor = PoiFingerprintExtractor(name, num_processes_fingerprint, verbose=False, source_stamp=stamp,
                                        label_files=foreground)
    extractor.show_progress_bar = progress
    extractor.run(overwrite_existing=not reuse)
    fingerprint = extractor.poi_fingerprint

    thresholds = surface_thresholds(fingerprint)
    flagged = flag_far_pois(fingerprint, thresholds)
    report = {"dataset": name,
              "rule": "flagged when the distance to its own structure's surface exceeds "
                      "max(max_surface_distance_mm[poi], min_voxel_diagonals * the case's voxel diagonal)",
              "max_surface_distance_mm": thresholds, "min_voxel_diagonals": MIN_VOXEL_DIAGONALS,
              "num_flagged": len(flagged), "flagged": flagged,
              "not_checked_occluded": sum(bool(q.get("occluded")) for c in fingerprint["cases"] for q in c["points"]),
              "occluded": "2D cases only: a POI on another structure's label (a projection hides what lies behind "
                          "it) has no visible surface to be measured against, and is not flagged"}
    atomic_write_text(staging / CLEANING_REPORT, json.dumps(report, indent=1) + "\n")
    if flagged:
        print(f"Cleaning: {len(flagged)} POI(s) far from their structure's surface are left out of training "
              f"targets (see {CLEANING_REPORT})")

    print("Experiment planning...")
    planner = planner_class(name, gpu_memory_target_in_gb=gpu_memory_target or 8, plans_name=plans_name,
                            poi_fingerprint=fingerprint, cleaning_thresholds=thresholds, flagged=flagged)
    plans = planner.plan_experiment()
    if landmark_only:
        point_preprocessor_at_labels(staging / "dataset.json", ds, name)

    manager = PlansManager(plans)
    if COARSE_CONFIGURATION in manager.available_configurations and "3d_fullres" in processes:
        processes = {**processes, COARSE_CONFIGURATION: processes["3d_fullres"]}  # long scans' coarse pass
    data_folders: List[str] = []
    for config, n in processes.items():
        if config not in manager.available_configurations:
            print(f"Configuration {config} is not planned for {name}; skipping (as nnU-Net does)")
            continue
        print(f"Preprocessing {config}...")
        preprocessor = PoiPreprocessor(verbose=False, poi_folder=str(ds.path / "poisTr"),
                                       flagged=flagged_keys(flagged))
        preprocessor.show_progress_bar = progress
        preprocessor.run(name, config, plans_name, n)
        identifier = manager.get_configuration(config).data_identifier
        # POI files and uv maps (where the plan has uv templates) sit beside nnU-Net's data folder
        for folder in (identifier, identifier + "_pois", identifier + "_uv"):
            if folder not in data_folders:
                data_folders.append(folder)
    if processes and not landmark_only:
        _copy_references(ds, staging / "gt_segmentations")
    gt = ["gt_segmentations"] if processes or landmark_only else []  # dataset.json's labels point there
    field_of_view_plans = [f"{p}.json" for p in getattr(planner, "field_of_view_plans", [])]
    return data_folders + gt + ["dataset_fingerprint.json", "poi_fingerprint.json", CLEANING_REPORT,
                                "dataset.json", SPLITS_FILE, *field_of_view_plans, f"{plans_name}.json"]


def _stage_raw_splits(ds: RawDataset, staging: Path, target: Path) -> None:
    """Stage the raw dataset's ``splits_final.json`` for publishing, where it has one and the preprocessed
    folder has none: nnU-Net only reads the preprocessed one. An existing preprocessed split (nnU-Net's or a
    user's) is never overwritten; a different one is reported. The raw split must name training cases."""
    source = ds.path / SPLITS_FILE
    if not source.is_file():
        return
    raw = _read_splits(source, set(ds.case_ids("Tr")))
    existing = target / SPLITS_FILE
    if existing.exists():
        try:
            same = json.loads(existing.read_text(encoding="utf-8")) == raw
        except (OSError, ValueError):
            same = False
        if not same:
            print(f"note: keeping {existing}; it differs from {source} (delete it to use the dataset's split)")
        return
    shutil.copy2(source, staging / SPLITS_FILE)
    print(f"Split: {source} -> {existing} ({len(raw)} folds)")


def _read_splits(path: Path, cases: set) -> List[Dict[str, List[str]]]:
    """A ``splits_final.json``: a list of ``{"train": [...], "val": [...]}`` naming training cases only."""
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PoiNnunetError(f"{path}: not a readable JSON split ({exc})") from None
    if not isinstance(splits, list) or not all(isinstance(s, dict) and isinstance(s.get("train"), list)
                                               and isinstance(s.get("val"), list) for s in splits):
        raise PoiNnunetError(f"{path}: must be a list of {{\"train\": [...], \"val\": [...]}} (nnU-Net's format)")
    unknown = sorted({c for s in splits for c in s["train"] + s["val"]} - cases)
    if unknown:
        raise PoiNnunetError(f"{path}: names {len(unknown)} case(s) that are not training cases, e.g. {unknown[:3]}")
    return splits


def _copy_references(ds: RawDataset, folder: Path) -> None:
    """nnU-Net keeps a copy of the reference labels beside the preprocessed data; so do we."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in ds.case_ids("Tr"):
        shutil.copy2(ds.label_file(case), folder / ds.label_file(case).name)


def _processes_per_configuration(configurations: Sequence[str],
                                 num_processes: Optional[Sequence[int]]) -> Dict[str, int]:
    """nnU-Net's -np rule: one number for all configurations, or one per configuration."""
    configurations = list(dict.fromkeys(configurations))
    if not num_processes:
        return {c: DEFAULT_PROCESSES.get(c, 4) for c in configurations}
    if len(num_processes) == 1:
        return {c: int(num_processes[0]) for c in configurations}
    if len(num_processes) != len(configurations):
        raise PoiNnunetError(f"-np takes one number or one per configuration ({len(configurations)}), "
                             f"got {len(num_processes)}")
    return {c: int(n) for c, n in zip(configurations, num_processes)}


def _check_in_raw_root(ds: RawDataset) -> None:
    root = raw_root()
    if ds.path.resolve().parent != root.resolve():
        raise PoiNnunetError(f"{ds.path}: nnU-Net plans only datasets inside nnUNet_raw={root}; "
                             "move it there or set nnUNet_raw")


def _check_reader(ds: RawDataset) -> None:
    """POIs are mapped through SimpleITK's geometry; readers that lay arrays out otherwise are refused."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    first = ds.case_ids("Tr")[:1]
    if not first:
        raise PoiNnunetError(f"{ds.path}: no training cases in imagesTr/")
    reader = determine_reader_writer_from_dataset_json(ds.meta, str(ds.image_files(first[0])[0]), verbose=False)
    if reader.__name__ not in SUPPORTED_READERS:
        raise PoiNnunetError(f"{ds.dataset_json}: nnU-Net would read these images with {reader.__name__}; "
                             f"POIs can only be mapped for {', '.join(SUPPORTED_READERS)}")


def _nnunet_integrity_check(ds: RawDataset, num_processes: int) -> None:
    """nnU-Net's own --verify_dataset_integrity, where it applies (it needs label maps)."""
    if not ds.has_labels():
        print("nnU-Net's integrity check needs labelsTr; a landmark-only dataset is checked by our validator only")
        return
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(ds.path), num_processes)
    except (AssertionError, RuntimeError) as exc:
        raise PoiNnunetError(f"{ds.path}: nnU-Net's integrity check failed: {exc}") from None
