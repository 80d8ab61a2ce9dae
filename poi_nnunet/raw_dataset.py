"""A dataset in the unified raw format: finding it, listing its cases, writing it.

The format is nnU-Net v2's raw format plus ``poisTr/`` (see FORMAT.md). This
module knows where files live; :mod:`poi_nnunet.validation` knows the rules.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import SimpleITK as sitk

from .atomic import atomic_write_image, atomic_write_text, staged_directory
from .errors import PathLike, PoiNnunetError
from .pois import PoiSet, write_poi_file

SPLITS = ("Tr", "Ts")
_DATASET_DIR = re.compile(r"^Dataset(\d{3})_(.+)$")


def raw_root() -> Path:
    value = os.environ.get("nnUNet_raw")
    if not value:
        raise PoiNnunetError(
            "nnUNet_raw is not set: export nnUNet_raw=/path/to/raw (nnU-Net's raw data folder) "
            "or pass the dataset folder's path instead of its id or name"
        )
    return Path(value)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not (0 < dataset_id < 1000):
        raise PoiNnunetError(f"dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise PoiNnunetError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def resolve_raw_dataset(spec: PathLike) -> Path:
    """Turn a dataset id (``501``), name (``Dataset501_Spine``) or folder path into a folder.

    An existing path always wins; otherwise the id or name is looked up in
    ``$nnUNet_raw``, as nnU-Net's own commands do.
    """
    text = str(spec)
    as_path = Path(text)
    if as_path.is_dir():
        return as_path
    if os.sep in text or text.startswith("."):
        raise PoiNnunetError(f"{text}: no such dataset folder")
    root = raw_root()
    if text.isdigit():
        wanted = int(text)
        matches = [p for p in _list_datasets(root) if int(_DATASET_DIR.match(p.name).group(1)) == wanted]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise PoiNnunetError(f"dataset id {wanted} is ambiguous in {root}: {[m.name for m in matches]}")
    elif (root / text).is_dir():
        return root / text
    known = ", ".join(p.name for p in _list_datasets(root)) or "none"
    raise PoiNnunetError(f"unknown dataset {text!r}: not found in nnUNet_raw={root} (datasets there: {known})")


def _list_datasets(root: Path) -> List[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _DATASET_DIR.match(p.name))


@dataclass
class RawDataset:
    """Read access to a dataset folder; reads dataset.json once."""

    path: Path
    meta: Dict[str, Any]

    @classmethod
    def open(cls, spec: PathLike) -> "RawDataset":
        path = resolve_raw_dataset(spec)
        meta_file = path / "dataset.json"
        if not meta_file.is_file():
            raise PoiNnunetError(f"{meta_file}: missing (every dataset needs a dataset.json)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PoiNnunetError(f"{meta_file}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise PoiNnunetError(f"{meta_file}: must hold a JSON object")
        return cls(path, meta)

    # ------------------------------------------------------------------ dataset.json
    @property
    def dataset_json(self) -> Path:
        return self.path / "dataset.json"

    @property
    def file_ending(self) -> str:
        return str(self.meta.get("file_ending", ".nii.gz"))

    @property
    def channel_names(self) -> Dict[str, str]:
        return {str(k): str(v) for k, v in (self.meta.get("channel_names") or self.meta.get("modality") or {}).items()}

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def labels(self) -> Dict[str, Any]:
        return dict(self.meta.get("labels") or {})

    def label_values(self) -> List[int]:
        """Integer label values (regions, given as lists, contribute their members)."""
        values = set()
        for v in self.labels.values():
            if isinstance(v, (list, tuple)):
                values.update(int(x) for x in v)
            else:
                values.add(int(v))
        return sorted(values)

    @property
    def ignore_label(self) -> Optional[int]:
        value = self.labels.get("ignore")
        return int(value) if isinstance(value, int) else None

    @property
    def poi_names(self) -> Dict[int, str]:
        return {int(k): str(v) for k, v in (self.meta.get("pois") or {}).items()}

    @property
    def poi_mirror_pairs(self) -> List[Tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.meta.get("poi_mirror_pairs") or []]

    # ------------------------------------------------------------------ files
    def case_ids(self, split: str = "Tr") -> List[str]:
        """Cases found as ``images<split>/<case>_0000<ending>`` files, sorted."""
        folder = self.path / f"images{split}"
        if not folder.is_dir():
            return []
        suffix = "_0000" + self.file_ending
        return sorted(f.name[: -len(suffix)] for f in folder.iterdir() if f.name.endswith(suffix))

    def image_files(self, case: str, split: str = "Tr") -> List[Path]:
        return [
            self.path / f"images{split}" / f"{case}_{int(c):04d}{self.file_ending}"
            for c in sorted(self.channel_names, key=int)
        ]

    def label_file(self, case: str, split: str = "Tr") -> Path:
        return self.path / f"labels{split}" / f"{case}{self.file_ending}"

    def poi_file(self, case: str, split: str = "Tr") -> Path:
        return self.path / f"pois{split}" / f"{case}.json"

    def has_labels(self, split: str = "Tr") -> bool:
        return (self.path / f"labels{split}").is_dir()

    def has_pois(self, split: str = "Tr") -> bool:
        return (self.path / f"pois{split}").is_dir()


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
                           labels={"background": 0, "L1": 20}, pois={101: "..."}) as w:
            w.add_case(CaseData("case_000", [ct], label, pois))

    ``numTraining`` is counted, not given. The finished folder is validated
    before it is moved into place, so a converter bug cannot publish a broken
    dataset.
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
            from .validation import validate_raw_dataset  # local import: validation imports this module
            from .errors import InvalidInputError

            problems = validate_raw_dataset(self.staging, progress=False)
            if problems:
                raise InvalidInputError(problems, headline=f"conversion to {self.target} produced an invalid dataset")
