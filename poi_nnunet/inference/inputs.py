"""Input cases of ``poi_predict``: nnU-Net-named files ``<case>_XXXX<file_ending>`` checked before any work.

Every problem found (a file not named that way, a case with the wrong channels,
an image whose dimensionality the model cannot take) is reported at once, each
naming its case and files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import InvalidInputError, PathLike, PoiNnunetError, Problem
from ..geometry import ImageGeometry


@dataclass(frozen=True)
class InputCase:
    case: str
    files: List[str]  # channel order _0000, _0001, ...


def list_input_cases(folder: PathLike, file_ending: str, num_channels: int) -> List[InputCase]:
    """Cases of ``folder`` via nnU-Net's ``create_lists_from_splitted_dataset_folder``, checked for channels."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise PoiNnunetError(f"{folder}: input folder does not exist")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    problems: List[Problem] = []
    channels: Dict[str, List[int]] = {}
    images = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(file_ending))
    for name in images:
        match = pattern.match(name)
        if not match:
            problems.append(Problem(str(folder / name), f"not named <case>_XXXX{file_ending} (nnU-Net's imagesTs "
                                    "naming: case id, underscore, 4-digit channel index)"))
            continue
        channels.setdefault(match.group(1), []).append(int(match.group(2)))
    if not images:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:3]
        hint = f" (found {', '.join(others)}; the model's file ending is {file_ending})" if others else ""
        raise PoiNnunetError(f"{folder}: no input images <case>_0000{file_ending}{hint}")
    expected = list(range(num_channels))
    for case, found in sorted(channels.items()):
        if sorted(found) != expected:
            names = ", ".join(f"{case}_{c:04d}{file_ending}" for c in sorted(found))
            want = ", ".join(f"{case}_{c:04d}{file_ending}" for c in expected)
            problems.append(Problem(str(folder), f"case {case!r} has {len(found)} channel file(s) ({names}); the "
                                    f"model takes {num_channels} ({want})"))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot predict the cases in {folder}")
    ids = sorted(channels)
    lists = create_lists_from_splitted_dataset_folder(str(folder), file_ending, ids, num_processes=1)
    return [InputCase(case, list(files)) for case, files in zip(ids, lists)]


def check_dimensionality(cases: Sequence[InputCase], configuration: str, configuration_axes: int,
                         trained_on_2d: Optional[bool]) -> Dict[str, ImageGeometry]:
    """Each case's ``_0000`` geometry; a 2D image for a 3D configuration (or a 3D image for a model
    trained on 2D images, or the reverse) is an error naming the case."""
    problems: List[Problem] = []
    geometries: Dict[str, ImageGeometry] = {}
    for case in cases:
        try:
            geo = ImageGeometry.from_file(case.files[0])
        except PoiNnunetError as exc:
            problems.append(Problem(case.files[0], str(exc)))
            continue
        geometries[case.case] = geo
        if geo.dim not in (2, 3):
            problems.append(Problem(case.files[0], f"a {geo.dim}D image; only 2D and 3D images can be predicted"))
        elif geo.dim == 2 and configuration_axes == 3:
            problems.append(Problem(case.files[0], f"case {case.case!r} is a 2D image but configuration "
                                    f"{configuration!r} is 3D; use a 2d model"))
        elif trained_on_2d is not None and (geo.dim == 2) != trained_on_2d:
            trained = "2D" if trained_on_2d else "3D"
            problems.append(Problem(case.files[0], f"case {case.case!r} is a {geo.dim}D image but the model was "
                                    f"trained on {trained} images"))
    if problems:
        raise InvalidInputError(problems, headline="images the model cannot take")
    return geometries
