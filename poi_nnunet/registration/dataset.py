"""``poi_augment``'s output: a new raw dataset holding D's cases plus the registration-augmented samples.

``Dataset<NEW>_<Name>Reg`` in ``$nnUNet_raw`` (``<Name>`` is D's name without
its ``DatasetNNN_`` prefix, unless ``--name`` says otherwise) holds

* every case of D (training and test), hard-linked where the file system allows, byte-identical;
* one sample ``<A>_reg_<B>`` per chosen pair (:mod:`~poi_nnunet.registration.pairs`): A's channels
  (intensities linearly, ``noNorm`` mask channels by nearest neighbour), A's labels (nearest neighbour)
  and A's points, all carried into B's grid; points that could not be kept are left out (reasons in
  :mod:`~poi_nnunet.registration.sample`);
* ``dataset.json``: D's, with ``numTraining`` counted and ``poi_source`` saying registration;
* ``augmentation.json``: per sample its origin (``moving``, ``fixed``, ``fold``), the transform
  (``transforms/<sample>.tfm``, ITK's format, maps B-space points to A-space points), the Dice of the
  carried labels against B's, the seconds it took and every dropped point; plus the settings, the
  seed and the cleaning fences, so the dataset can be remade;
* ``splits_final.json``: nnU-Net's default folds of D's cases, each sample added to the train list of
  every split where its sources train and to no val list. ``poi_plan_and_preprocess`` copies it into
  the preprocessed folder, where nnU-Net reads it.

Everything is written in a hidden sibling folder, validated
(:func:`~poi_nnunet.raw_format_checks.validate_raw_dataset`) and renamed into
place at the end (:func:`~poi_nnunet.atomic.staged_directory`): a failure or
an interrupt leaves no dataset, and an existing one untouched.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from tqdm import tqdm

from ..atomic import atomic_write_text, staged_directory
from ..errors import InvalidInputError, PathLike, PoiNnunetError
from ..raw_dataset import SPLITS, RawDataset, dataset_folder_name, raw_root
from ..raw_format_checks import check_raw_dataset, validate_raw_dataset
from .cleaning import surface_fences
from .pairs import Pair, augmented_splits, check_name_clashes, choose_pairs, default_splits, shortfall
from .register import RegistrationSettings
from .sample import TRANSFORM_FOLDER, SampleJob, make_sample

AUGMENTATION_FILE = "augmentation.json"
SPLITS_FILE = "splits_final.json"
NAME_SUFFIX = "Reg"
_FOLDER = re.compile(r"^Dataset(\d+)_(.+)$")


@dataclass
class AugmentOptions:
    """What ``poi_augment`` was asked for; ``settings.similarity`` is replaced by the dataset's default when
    ``similarity`` is ``None`` (labels where D has dense label maps, the image otherwise)."""

    per_case: int
    output_id: int
    seed: int = 0
    name: Optional[str] = None
    similarity: Optional[str] = None
    settings: RegistrationSettings = field(default_factory=RegistrationSettings)
    num_processes: int = 1
    overwrite: bool = False
    progress: bool = True


@dataclass
class AugmentResult:
    path: Path
    num_samples: int
    num_dropped: int
    seconds_per_sample: float
    dropped_by_reason: Dict[str, int]


def source_name(ds: RawDataset) -> str:
    """``Dataset501_Leg`` -> ``Leg``."""
    match = _FOLDER.match(ds.path.name)
    return match.group(2) if match else ds.path.name


def output_folder(ds: RawDataset, output_id: int, name: Optional[str], overwrite: bool) -> Path:
    """``$nnUNet_raw/Dataset<id>_<name>``; refuses the source's id, an id another dataset uses, and (without
    ``overwrite``) an existing folder, and never overwrites a dataset ``poi_augment`` did not make."""
    match = _FOLDER.match(ds.path.name)
    if match and int(match.group(1)) == int(output_id):
        raise PoiNnunetError(f"--output-id {output_id} is the source dataset's own id")
    root = raw_root()
    path = root / dataset_folder_name(int(output_id), name or source_name(ds) + NAME_SUFFIX)
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != path.name and
                    (m := _FOLDER.match(p.name)) and int(m.group(1)) == int(output_id)) if root.is_dir() else []
    if others:
        raise PoiNnunetError(f"--output-id {output_id}: already used by {', '.join(others)} in {root} "
                             "(nnU-Net needs one name per id); choose another id")
    if path.exists():
        if not overwrite:
            raise PoiNnunetError(f"{path}: already exists; pass --overwrite to replace it or choose another "
                                 "--output-id")
        if not (path / AUGMENTATION_FILE).is_file():
            raise PoiNnunetError(f"{path}: exists and was not made by poi_augment (no {AUGMENTATION_FILE}); "
                                 "refusing to overwrite it")
    return path


def check_source(ds: RawDataset, similarity: Optional[str]) -> str:
    """The similarity to register with; errors for datasets whose labels cannot be carried."""
    if ds.ignore_label is not None:
        raise PoiNnunetError(f"{ds.dataset_json}: labels has an 'ignore' label (point-annotated, sparse labels): "
                             "resampling would lose or duplicate the clicks; augment a dense dataset instead "
                             "(e.g. poi_pseudo_masks' output)")
    if similarity is None:
        return "labels" if ds.has_labels() else "image"
    if similarity == "labels" and not ds.has_labels():
        raise PoiNnunetError(f"{ds.path}: --similarity labels needs labelsTr; this dataset is landmark-only "
                             "(use --similarity image)")
    return similarity


def augment_dataset(dataset: PathLike, options: AugmentOptions) -> AugmentResult:
    """Write the augmented dataset (module docstring) and return what was made."""
    if options.per_case < 1:
        raise PoiNnunetError(f"--registration must be at least 1, got {options.per_case}")
    ds = RawDataset.open(dataset)
    similarity = check_source(ds, options.similarity)
    settings = replace(options.settings, similarity=similarity)
    target = output_folder(ds, options.output_id, options.name, options.overwrite)
    print(f"Validating {ds.path} ...")
    check_raw_dataset(ds.path, progress=options.progress)
    cases = ds.case_ids("Tr")
    splits = default_splits(cases)
    pairs = choose_pairs(splits, options.per_case, options.seed)
    check_name_clashes(cases + ds.case_ids("Ts"), pairs)
    short = shortfall(splits, options.per_case)
    if short:
        print(f"note: pairs stay within a fold, and {len(short)} fold(s) are too small for {options.per_case} "
              f"partner(s) per case: " + ", ".join(f"fold {f}: {n}" for f, n in short))
    if not pairs:
        raise PoiNnunetError(f"{ds.path}: no pairs: every fold of nnU-Net's split has a single case")
    fences: Dict[str, float] = {}
    if ds.has_labels() and (ds.path / "poisTr").is_dir():
        print("Measuring the cleaning fences on the original cases ...")
        fences = surface_fences(ds, options.num_processes, options.progress)

    started = time.perf_counter()
    with staged_directory(target, overwrite=options.overwrite) as staging:
        for split in SPLITS:
            for case in ds.case_ids(split):
                link_case(ds, case, split, staging)
        jobs = [sample_job(ds, pair, staging, settings, fences) for pair in pairs]
        everything = dict(sorted(run_jobs(jobs, options.num_processes, options.progress)))
        records = {n: r for n, r in everything.items() if "skipped" not in r}
        skipped = {n: r for n, r in everything.items() if "skipped" in r}
        if not records:
            reason = next(iter(skipped.values()))["skipped"]
            raise PoiNnunetError(f"{ds.path}: every registration was refused ({reason})")
        written = [p for p in pairs if p.name in records]
        write_metadata(ds, staging, records, skipped, splits, written, settings, options, fences)
        problems = validate_raw_dataset(staging, progress=False)
        if problems:
            raise InvalidInputError(problems, headline=f"the augmented dataset {target.name} would be invalid")
    elapsed = time.perf_counter() - started
    dropped = [d for r in records.values() for d in r["dropped_pois"]]
    by_reason: Dict[str, int] = {}
    for d in dropped:
        by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + 1
    if skipped:
        print(f"note: {len(skipped)} pair(s) skipped, their registration mirrors or collapses the anatomy: "
              f"{', '.join(skipped)} (augmentation.json, 'skipped')")
    return AugmentResult(target, len(records), len(dropped), elapsed / max(len(everything), 1), by_reason)


def sample_job(ds: RawDataset, pair: Pair, staging: Path, settings: RegistrationSettings,
               fences: Dict[str, float]) -> SampleJob:
    """The paths of one pair's inputs (in D) and outputs (in the staging folder)."""
    channels = sorted(ds.channel_names, key=int)
    nearest = [ds.channel_names[c].lower() == "nonorm" for c in channels]
    labels = ds.has_labels()
    has_pois = ds.poi_file(pair.moving).is_file()
    name = pair.name
    return SampleJob(
        pair=pair,
        moving_images=[str(p) for p in ds.image_files(pair.moving)],
        moving_label=str(ds.label_file(pair.moving)) if labels else None,
        moving_pois=str(ds.poi_file(pair.moving)) if has_pois else None,
        fixed_image=str(ds.image_files(pair.fixed)[0]),
        fixed_label=str(ds.label_file(pair.fixed)) if labels else None,
        nearest=nearest,
        out_images=[str(staging / "imagesTr" / f"{name}_{int(c):04d}{ds.file_ending}") for c in channels],
        out_label=str(staging / "labelsTr" / f"{name}{ds.file_ending}") if labels else None,
        out_pois=str(staging / "poisTr" / f"{name}.json") if has_pois else None,
        out_transform=str(staging / TRANSFORM_FOLDER / f"{name}.tfm"),
        settings=settings,
        fences=fences,
    )


def run_jobs(jobs: List[SampleJob], num_processes: int, progress: bool) -> Iterator[tuple]:
    """``(sample name, record)`` per job, in one process or a spawned pool, with a progress bar (and ETA)."""
    bar = tqdm(total=len(jobs), desc="registration pairs", unit="pair", disable=not progress)
    try:
        if num_processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield job.pair.name, make_sample(job)
                bar.update()
        else:
            # spawn, like nnU-Net: forking a process that already runs ITK threads can deadlock
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(num_processes, len(jobs))) as pool:
                for name, record in pool.imap_unordered(_named_sample, jobs):
                    yield name, record
                    bar.update()
    finally:
        bar.close()


def _named_sample(job: SampleJob) -> tuple:
    return job.pair.name, make_sample(job)


def link_case(ds: RawDataset, case: str, split: str, staging: Path) -> None:
    """Hard-link (or copy) one original case's channels, label and points into the staging folder."""
    sources = list(ds.image_files(case, split))
    if ds.has_labels(split):
        sources.append(ds.label_file(case, split))
    if ds.poi_file(case, split).is_file():
        sources.append(ds.poi_file(case, split))
    for source in sources:
        destination = staging / source.parent.name / source.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:  # a link costs no space; files are never written in place (atomic writes replace the inode)
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)


def write_metadata(ds: RawDataset, staging: Path, records: Dict[str, Dict[str, Any]],
                   skipped: Dict[str, Dict[str, Any]], splits: List[Dict[str, List[str]]], pairs: List[Pair],
                   settings: RegistrationSettings, options: AugmentOptions, fences: Dict[str, float]) -> None:
    """dataset.json, augmentation.json and splits_final.json of the new dataset."""
    meta = dict(ds.meta)
    meta["numTraining"] = len(ds.case_ids("Tr")) + len(records)
    original = ds.meta.get("poi_source")
    meta["poi_source"] = (f"registration (poi_augment from {ds.path.name}): each <A>_reg_<B> sample carries "
                          "case A's points through the same transform as its image into case B's shape; "
                          f"the original cases' points: {original or 'as in ' + ds.path.name}")
    atomic_write_text(staging / "dataset.json", json.dumps(meta, indent=2) + "\n")
    num_far = sum(d["reason"] == "far_from_surface" for r in records.values() for d in r["dropped_pois"])
    block = {
        "source": ds.path.name,
        "method": "registration-based augmentation (seed 000): SimpleITK affine from centred moments, then a cubic "
                  "BSpline; A's channels, labels and points resampled / carried into B's grid",
        "samples_per_case": options.per_case,
        "seed": options.seed,
        "settings": settings.to_json(),
        "pairing": "pairs only within one fold of nnU-Net's default 5-fold split (seed 12345, sorted case ids); "
                   "each sample trains in every split where its sources train and validates nowhere",
        "cleaning": {"rule": "the planner's: a point farther from its structure's surface than max(the POI id's "
                             "Tukey fence over the original cases, 1.1 voxel diagonals) is dropped",
                     "max_surface_distance_mm": fences, "num_dropped": num_far},
        "samples": records,
        "skipped": skipped,
    }
    atomic_write_text(staging / AUGMENTATION_FILE, json.dumps(block, indent=1) + "\n")
    atomic_write_text(staging / SPLITS_FILE, json.dumps(augmented_splits(splits, pairs), indent=1) + "\n")
