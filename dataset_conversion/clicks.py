"""Write a point-annotated (sparse) segmentation dataset: a few labelled voxels per structure.

Every voxel that no click labels holds nnU-Net's ignore label: the highest
label value, named "ignore" in dataset.json (background clicks label 0,
structure clicks their class). nnU-Net trains on such a dataset as it is.
Two sources:

(a) Clicked points: --points FOLDER holds one <case>.json per case in the
    unified point format (FORMAT.md: "coordinate_system": "LPS", world mm);
    a point's "structure" is the class clicked (0 = background), its "poi" only
    numbers the clicks. --images is a folder of <case>_0000.nii.gz (+ _0001 ...,
    nnU-Net naming) or <case>.nii.gz/.nrrd/.mha, or a raw dataset (id, name or
    folder), whose imagesTr (and poisTr, imagesTs/labelsTs/poisTs) are used.
    Class names: --labels liver=1 spleen=2 (simplest after exporting 3D Slicer
    markups: no file to write), or --labels-from a dataset.json (or dataset);
    without either, the --images dataset's labels. Values missing below the
    highest are declared as "label_<v>" (nnU-Net wants them consecutive). A
    point whose structure is not a class, that lies outside its image, or that
    shares its voxel with a click of another class is an error naming the file
    and the point.

(b) Simulated: --from-dataset 501 (id, name or folder) of densely labelled
    cases. Per case, --clicks-per-structure N clicks on every structure label
    present, drawn uniformly among its interior voxels: those at least
    --interior-fraction (0.5) x the structure's deepest distance from its
    border (mm, Euclidean with the voxel spacing; the image edge counts as
    border), so thin structures fall back to their deepest voxels (fewer than N
    clicks only when a structure has fewer such voxels). Then
    --background-clicks M background clicks at least --background-margin-mm
    from every structure (or, where no background is that far, in the
    deepest background). --seed decides everything; a case's clicks depend
    only on the seed and its name. Simulated clicks never mislabel: a click's
    ball is clipped to its own class in the dense labels.

--click-radius-mm R (both sources): a click labels the voxel that holds it and
every voxel whose centre is within R mm (0, the default: the one voxel);
where balls overlap, the nearer click wins.

The new dataset holds imagesTr (copied byte for byte), the sparse labelsTr,
poisTr (copied: the images are the same, so the POIs stay valid), the source's
imagesTs/labelsTs/poisTs if any, and two folders nnU-Net ignores:

  labelsTr_reference/<case>.nii.gz   the source's dense label of every training
                                     case (simulation only), for evaluation;
                                     never for training
  clicksTr/<case>.json               the clicks, in the unified point format
                                     (structure = class, poi = click number);
                                     usable as --points to rebuild the labels
                                     (exactly so for radius 0)

dataset.json gets the labels plus "ignore", and "click_annotation": the
options used and the labelling cost, "annotated_fraction" = labelled voxels
/ all voxels over the training cases (also printed).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from poi_nnunet.atomic import atomic_write, atomic_write_image
from poi_nnunet.errors import InvalidInputError, PoiNnunetError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet, read_poi_file_lenient, write_poi_file
from poi_nnunet.raw_dataset import DENSE_REFERENCE_FOLDER, RawDataset
from poi_nnunet.raw_dataset_writer import DatasetWriter
from poi_nnunet.raw_format_checks import check_raw_dataset

from ._common import fail, raise_if
from ._images import VOLUME_SUFFIXES, read_image, strip_image_suffix
from ._output import add_output_arguments, output_folder
from .click_simulation import Click, annotated_voxels, containing_voxel, draw_clicks, paint_clicks

HELP = "point-annotated (sparse) segmentation: clicked points, or clicks simulated from a dense dataset"

REFERENCE_FOLDER = DENSE_REFERENCE_FOLDER
CLICKS_FOLDER = "clicksTr"
_SIMULATION_DEFAULTS = {"clicks_per_structure": 5, "background_clicks": 10, "seed": 0, "interior_fraction": 0.5,
                        "background_margin_mm": 5.0}
_DATASET_KEYS = ("channel_names", "labels", "numTraining", "file_ending", "pois")
ImageSource = Union[Path, sitk.Image]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dataset", metavar="DATASET",
                        help="simulate clicks on this densely labelled dataset (id, name or folder)")
    source.add_argument("--points", type=Path, metavar="FOLDER", help="folder of <case>.json clicked points")
    clicked = parser.add_argument_group("clicked points (--points)")
    clicked.add_argument("--images", metavar="FOLDER_OR_DATASET",
                         help="folder of <case>_0000.nii.gz or <case>.nii.gz images, or a raw dataset")
    clicked.add_argument("--labels", nargs="+", metavar="NAME=VALUE",
                         help="class names and values, e.g. --labels liver=1 spleen=2 (background is 0)")
    clicked.add_argument("--labels-from", metavar="DATASET_JSON",
                         help="take the classes from this dataset.json (or dataset) instead")
    clicked.add_argument("--channel-names", nargs="+", metavar="NAME",
                         help="dataset.json channel names for an image folder, one per channel; nnU-Net "
                              "normalises 'CT' by CT statistics (default: image)")
    sim = parser.add_argument_group("simulation (--from-dataset)")
    sim.add_argument("--clicks-per-structure", type=int, metavar="N", help="clicks per structure present (default 5)")
    sim.add_argument("--background-clicks", type=int, metavar="M", help="background clicks per case (default 10)")
    sim.add_argument("--seed", type=int, help="random seed; the same seed gives the same clicks (default 0)")
    sim.add_argument("--interior-fraction", type=float, metavar="F",
                     help="click where the border distance is >= F x the structure's deepest (default 0.5)")
    sim.add_argument("--background-margin-mm", type=float, metavar="MM",
                     help="background clicks at least this far from any structure (default 5)")
    parser.add_argument("--click-radius-mm", type=float, default=0.0, metavar="R",
                        help="each click labels the voxels within R mm (default 0: the voxel clicked)")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    radius = float(args.click_radius_mm)
    if not (math.isfinite(radius) and radius >= 0):
        raise _option_error("--click-radius-mm", f"must be a finite number >= 0, got {radius}")
    if args.from_dataset is not None:
        given = [f"--{k}" for k in ("images", "labels", "labels_from", "channel_names") if getattr(args, k)]
        if given:
            raise _option_error(given[0].replace("_", "-"), "is for --points, not --from-dataset")
        target, cost = _simulate(args, radius)
    else:
        given = [f"--{k}" for k in _SIMULATION_DEFAULTS if getattr(args, k) is not None]
        if given:
            raise _option_error(given[0].replace("_", "-"), "is for --from-dataset, not --points")
        target, cost = _from_points(args, radius)
    print(f"labelled {cost['annotated_voxels']} of {cost['total_voxels']} voxels "
          f"({100 * cost['annotated_fraction']:.4g}%); every other voxel is 'ignore'")
    return target


def _option_error(option: str, message: str) -> InvalidInputError:
    return InvalidInputError([Problem(option, message)], headline="invalid option")


# ---------------------------------------------------------------------------- writing
class _ClickWriter(DatasetWriter):
    """A :class:`DatasetWriter` that copies files byte for byte.

    Images must reach nnU-Net unchanged; reading and re-writing one could
    change it (a scaled int16 CT comes back as float32). The file counts are
    the writer's own, so ``numTraining`` and the final validation stay its job.
    """

    def add_copied_case(self, case_id: str, split: str, images: Sequence[ImageSource],
                        label: Optional[sitk.Image], pois: Optional[Path]) -> None:
        if len(images) != len(self.channel_names):
            raise PoiNnunetError(f"case {case_id}: {len(images)} image channel(s), dataset has "
                                 f"{len(self.channel_names)}")
        for c, image in enumerate(images):
            self.put(f"images{split}/{case_id}_{c:04d}{self.file_ending}", image)
        if label is not None:
            self.put(f"labels{split}/{case_id}{self.file_ending}", label)
            self._has_label[split] = True
        if pois is not None:
            self.put(f"pois{split}/{case_id}.json", pois)
        self._counts[split] += 1

    def put(self, relative: str, source: ImageSource) -> None:
        """Copy a file (or write an image) to ``relative`` inside the dataset."""
        if isinstance(source, sitk.Image):
            atomic_write_image(self.staging / relative, source)
        else:
            atomic_write(self.staging / relative, lambda tmp: shutil.copyfile(source, tmp))


def _held_out_cases(writer: _ClickWriter, ds: RawDataset) -> None:
    """Copy imagesTs/labelsTs/poisTs as they are: held-out cases keep their dense references."""
    for case in ds.case_ids("Ts"):
        for c, image in enumerate(ds.image_files(case, "Ts")):
            writer.put(f"imagesTs/{case}_{c:04d}{ds.file_ending}", image)
        for relative, source in ((f"labelsTs/{case}{ds.file_ending}", ds.label_file(case, "Ts")),
                                 (f"poisTs/{case}.json", ds.poi_file(case, "Ts"))):
            if source.is_file():
                writer.put(relative, source)


def _writer(args: argparse.Namespace, channels: Mapping[str, str], labels: Dict[str, int],
            ds: Optional[RawDataset], file_ending: str) -> _ClickWriter:
    """dataset.json: the source dataset's keys (POI names, mirror pairs, ...), the labels plus "ignore"."""
    extra = {k: v for k, v in ds.meta.items() if k not in _DATASET_KEYS} if ds is not None else {}
    highest = max(max(v) if isinstance(v, list) else v for v in labels.values())
    labels = {**labels, "ignore": highest + 1}
    return _ClickWriter(output_folder(args), dict(channels), labels, pois=(ds.poi_names or None) if ds else None,
                        file_ending=file_ending, extra=extra, overwrite=args.overwrite)


def _sparse_image(sparse: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(sparse.astype(np.uint8 if sparse.max() < 256 else np.uint16))
    return geometry.apply_to(image)


def _clicks_file(writer: _ClickWriter, case: str, clicks: Sequence[Click], geometry: ImageGeometry) -> None:
    numbers: Dict[int, int] = {}
    points = []
    for click in clicks:
        numbers[click.label] = numbers.get(click.label, 0) + 1
        world = geometry.array_to_world(np.asarray(click.array_index, dtype=np.float64))
        points.append(Poi(click.label, numbers[click.label], tuple(float(c) for c in world)))
    write_poi_file(writer.staging / CLICKS_FOLDER / f"{case}.json", PoiSet(points))


def _cost(counts: Sequence[Dict[str, int]]) -> Dict[str, Any]:
    annotated = sum(c["annotated"] for c in counts)
    total = sum(c["total"] for c in counts)
    return {"annotated_voxels": annotated, "total_voxels": total, "annotated_fraction": annotated / max(total, 1)}


# ---------------------------------------------------------------------------- (b) simulation
def _simulate(args: argparse.Namespace, radius: float) -> Tuple[Path, Dict[str, Any]]:
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in _SIMULATION_DEFAULTS.items()}
    margin = opts["background_margin_mm"]
    checks = {"clicks_per_structure": opts["clicks_per_structure"] >= 1,
              "background_clicks": opts["background_clicks"] >= 0, "seed": opts["seed"] >= 0,
              "interior_fraction": 0 < opts["interior_fraction"] <= 1,
              "background_margin_mm": math.isfinite(margin) and margin >= 0}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise _option_error("--" + bad[0].replace("_", "-"), f"out of range: {opts[bad[0]]} (clicks per structure "
                            ">= 1, background clicks and seed >= 0, interior fraction in (0, 1], margin >= 0)")
    ds = check_raw_dataset(args.from_dataset, progress=False)
    if not ds.has_labels():
        raise fail(ds.path, "has no labelsTr/: clicks are simulated from dense segmentations")
    if ds.ignore_label is not None:
        raise fail(ds.dataset_json, "already has an 'ignore' label (sparse); simulate from a densely labelled dataset")
    writer = _writer(args, ds.channel_names, ds.labels, ds, ds.file_ending)
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
            writer.add_copied_case(case, "Tr", ds.image_files(case), _sparse_image(sparse, geometry),
                                   poi_file if poi_file.is_file() else None)
            writer.put(f"{REFERENCE_FOLDER}/{case}{ds.file_ending}", label_file)
            _clicks_file(writer, case, clicks, geometry)
        _held_out_cases(writer, ds)
        cost = _cost(counts)
        writer.extra = {**writer.extra, "click_annotation": {
            "source": "simulated", "from_dataset": str(ds.path), **opts, "radius_mm": radius, **cost,
            "dense_references": f"{REFERENCE_FOLDER}/", "clicks": f"{CLICKS_FOLDER}/"}}
    return writer.target, cost


# ---------------------------------------------------------------------------- (a) clicked points
def _from_points(args: argparse.Namespace, radius: float) -> Tuple[Path, Dict[str, Any]]:
    folder = Path(args.points)
    if not folder.is_dir():
        raise fail(folder, "no such folder of points files")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise fail(folder, "holds no <case>.json points files")
    if not args.images:
        raise _option_error("--images", "is required with --points (an image folder or a raw dataset)")
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
    writer = _writer(args, channels, labels, ds, ending)
    ignore = writer.labels["ignore"]
    counts = []
    with writer:
        for points_file, images, geometry, clicks in cases:
            case = points_file.stem
            sparse = paint_clicks(geometry.size[::-1], geometry.spacing[::-1], clicks, radius, ignore)
            counts.append(annotated_voxels(sparse, ignore))
            sources = [p if p.name.endswith(ending) else read_image(p, None) for p in images]
            poi_file = ds.poi_file(case) if ds is not None else None
            writer.add_copied_case(case, "Tr", sources, _sparse_image(sparse, geometry),
                                   poi_file if poi_file is not None and poi_file.is_file() else None)
            writer.put(f"{CLICKS_FOLDER}/{case}.json", points_file)
        if ds is not None:
            _held_out_cases(writer, ds)
        cost = _cost(counts)
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
    names = args.channel_names or (["image"] if count == 1 else None)
    if names is None or len(names) != count:
        raise _option_error("--channel-names", f"the images have {count} channel(s): give one name each")
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
        raise _option_error("--labels", "name the classes (e.g. --labels liver=1 spleen=2) or pass --labels-from")
    if not isinstance(labels, dict) or not all(isinstance(v, int) and v >= 0 for v in labels.values()):
        raise fail(source, "'labels' must map names to integer values (regions cannot be clicked)")
    return _consecutive({k: v for k, v in labels.items() if k != "ignore"}, source)


def _parse_labels(items: Sequence[str]) -> Dict[str, int]:
    labels: Dict[str, int] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if not name or not value.strip().isdigit() or name == "ignore" or name in labels:
            raise _option_error("--labels", f"{item!r}: expected NAME=VALUE with a new name (not 'ignore') and an "
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


def _read_clicks(path: Path, geometry: ImageGeometry, classes: set, image: Path) -> Tuple[List[Click], List[Problem]]:
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
