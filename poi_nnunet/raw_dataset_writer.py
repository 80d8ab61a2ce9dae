"""Writing a dataset in the unified raw format: staged, checked, then published.

Layering: :mod:`poi_nnunet.raw_dataset` finds and reads datasets,
:mod:`poi_nnunet.raw_format_checks` checks them (and reads them through
``raw_dataset``), and this module writes one and runs those checks on the
staging folder before it appears under its name. Nothing below imports this
module, so the imports point one way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import SimpleITK as sitk

from .atomic import atomic_write_image, atomic_write_text, staged_directory
from .errors import InvalidInputError, PoiNnunetError
from .pois import PoiSet, write_poi_file
from .raw_dataset import SPLITS
from .raw_format_checks import validate_raw_dataset


@dataclass
class CaseData:
    """What a converter hands the writer for one case."""

    case_id: str
    images: Sequence[sitk.Image]
    label: Optional[sitk.Image] = None
    pois: Optional[PoiSet] = None
    split: str = "Tr"


@dataclass
class DatasetWriter:
    """Write a dataset into a staging folder; it appears under its name only when complete.

    Use as a context manager::

        with DatasetWriter(root / "Dataset501_Spine", channel_names={"0": "CT"},
                           labels={"background": 0, "vertebra": 1}, pois={101: "..."}) as w:
            w.add_case(CaseData("case_000", [ct], label, pois))

    ``numTraining`` is counted, not given. The finished folder is validated
    (:func:`~poi_nnunet.raw_format_checks.validate_raw_dataset`) before it is
    moved into place, so a converter bug cannot publish a broken dataset;
    ``validate=False`` skips that check.
    """

    target: Path
    channel_names: Mapping[str, str]
    labels: Mapping[str, Any]
    pois: Optional[Mapping[int, str]] = None
    file_ending: str = ".nii.gz"
    extra: Mapping[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    validate: bool = True

    def __post_init__(self) -> None:
        self.target = Path(self.target)
        self._counts = {s: 0 for s in SPLITS}
        self._has_label = {s: False for s in SPLITS}
        self._ctx = None
        self._staging: Optional[Path] = None

    def __enter__(self) -> "DatasetWriter":
        self._ctx = staged_directory(self.target, overwrite=self.overwrite)
        self._staging = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._ctx is not None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:  # let the staging folder be removed, then re-raise
                self._ctx.__exit__(type(err), err, err.__traceback__)
                raise
        return bool(self._ctx.__exit__(exc_type, exc, tb))

    @property
    def staging(self) -> Path:
        if self._staging is None:
            raise RuntimeError("DatasetWriter must be used as a context manager")
        return self._staging

    def add_case(self, case: CaseData) -> None:
        if case.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {case.split!r}")
        if len(case.images) != len(self.channel_names):
            raise PoiNnunetError(
                f"case {case.case_id}: {len(case.images)} image channel(s) given, dataset has {len(self.channel_names)}"
            )
        root = self.staging
        for c, image in enumerate(case.images):
            atomic_write_image(root / f"images{case.split}" / f"{case.case_id}_{c:04d}{self.file_ending}", image)
        if case.label is not None:
            atomic_write_image(root / f"labels{case.split}" / f"{case.case_id}{self.file_ending}", case.label)
            self._has_label[case.split] = True
        if case.pois is not None:
            write_poi_file(root / f"pois{case.split}" / f"{case.case_id}.json", case.pois)
        self._counts[case.split] += 1

    def dataset_json(self) -> Dict[str, Any]:
        meta: Dict[str, Any] = {
            "channel_names": {str(k): v for k, v in self.channel_names.items()},
            "labels": dict(self.labels),
            "numTraining": self._counts["Tr"],
            "file_ending": self.file_ending,
        }
        if self.pois:
            meta["pois"] = {str(int(k)): str(v) for k, v in sorted(self.pois.items())}
        meta.update(self.extra)
        return meta

    def _finish(self) -> None:
        if self._counts["Tr"] == 0:
            raise PoiNnunetError(f"{self.target}: no training cases were written")
        atomic_write_text(self.staging / "dataset.json", json.dumps(self.dataset_json(), indent=2) + "\n")
        if self.validate:
            problems = validate_raw_dataset(self.staging, progress=False)
            if problems:
                raise InvalidInputError(problems, headline=f"conversion to {self.target} produced an invalid dataset")
