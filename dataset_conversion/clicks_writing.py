"""Writing a point-annotated dataset, shared by both `poi_convert clicks` sources (clicks.py).

The writer copies images byte for byte, dataset.json gets the source's keys and
the labels plus "ignore", the held-out cases are copied as they are, and the
labelling cost is summed over the training cases.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from poi_nnunet.atomic import atomic_write, atomic_write_image
from poi_nnunet.errors import InvalidInputError, PoiNnunetError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_dataset_writer import DatasetWriter

from ._output import output_folder

CLICKS_FOLDER = "clicksTr"
_DATASET_KEYS = ("channel_names", "labels", "numTraining", "file_ending", "pois")
ImageSource = Union[Path, sitk.Image]


def option_error(option: str, message: str) -> InvalidInputError:
    """The error for a bad command-line option (``option`` as typed, e.g. "--labels")."""
    return InvalidInputError([Problem(option, message)], headline="invalid option")


class ClickWriter(DatasetWriter):
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


def copy_held_out_cases(writer: ClickWriter, ds: RawDataset) -> None:
    """Copy imagesTs/labelsTs/poisTs as they are: held-out cases keep their dense references."""
    for case in ds.case_ids("Ts"):
        for c, image in enumerate(ds.image_files(case, "Ts")):
            writer.put(f"imagesTs/{case}_{c:04d}{ds.file_ending}", image)
        for relative, source in ((f"labelsTs/{case}{ds.file_ending}", ds.label_file(case, "Ts")),
                                 (f"poisTs/{case}.json", ds.poi_file(case, "Ts"))):
            if source.is_file():
                writer.put(relative, source)


def click_writer(args: argparse.Namespace, channels: Mapping[str, str], labels: Dict[str, int],
                 ds: Optional[RawDataset], file_ending: str) -> ClickWriter:
    """dataset.json: the source dataset's keys (POI names, mirror pairs, ...), the labels plus "ignore"."""
    extra = {k: v for k, v in ds.meta.items() if k not in _DATASET_KEYS} if ds is not None else {}
    highest = max(max(v) if isinstance(v, list) else v for v in labels.values())
    labels = {**labels, "ignore": highest + 1}
    return ClickWriter(output_folder(args), dict(channels), labels, pois=(ds.poi_names or None) if ds else None,
                       file_ending=file_ending, extra=extra, overwrite=args.overwrite)


def sparse_label_image(sparse: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    """The painted label array as an image (uint8, or uint16 past 255) on the case's geometry."""
    image = sitk.GetImageFromArray(sparse.astype(np.uint8 if sparse.max() < 256 else np.uint16))
    return geometry.apply_to(image)


def annotation_cost(counts: Sequence[Dict[str, int]]) -> Dict[str, Any]:
    """Labelled voxels / all voxels over the training cases, from each case's annotated_voxels() counts."""
    annotated = sum(c["annotated"] for c in counts)
    total = sum(c["total"] for c in counts)
    return {"annotated_voxels": annotated, "total_voxels": total, "annotated_fraction": annotated / max(total, 1)}
