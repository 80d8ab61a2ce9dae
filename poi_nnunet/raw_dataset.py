"""A dataset in the unified raw format: finding it, reading dataset.json, listing its cases.

The format is nnU-Net v2's raw format plus ``poisTr/`` (see docs/format.md). This
module knows where files live; :mod:`poi_nnunet.raw_format_checks` knows the
rules and :mod:`poi_nnunet.raw_dataset_writer` writes a dataset (checked
before it is published). Each of those imports this module, never the
reverse.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import PathLike, PoiNnunetError

SPLITS = ("Tr", "Ts")
# Dense label maps of a point-annotated dataset's training cases (``poi_convert clicks``), for evaluation
# only: nnU-Net never reads this folder, so they cannot leak into training.
DENSE_REFERENCE_FOLDER = "labelsTr_reference"
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
