"""What the synthetic phantoms share: per-case seeds, case names and splits, command-line options.

Each case gets its own seed derived from the dataset seed and the case's
index, so a case is identical whether it is generated alone, in a dataset of
5 or of 500, and test cases never repeat training cases.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter

from ._output import add_output_arguments


def case_seed(dataset_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for case ``index`` of a dataset generated with ``dataset_seed``."""
    return int(np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(2, dtype=np.uint64)[0] >> 1)


def planned_cases(prefix: str, num_cases: int, num_test: int, seed: int) -> Iterator[Tuple[str, int, str]]:
    """``(case_id, case_seed, split)``: training cases first, then held-out ones numbered on after them."""
    if num_cases < 1:
        raise PoiNnunetError(f"the number of training cases must be at least 1, got {num_cases}")
    if num_test < 0:
        raise PoiNnunetError(f"the number of test cases must be 0 or more, got {num_test}")
    for i in range(num_cases + num_test):
        yield f"{prefix}_{i:03d}", case_seed(seed, i), ("Tr" if i < num_cases else "Ts")


def child_generators(seed: int, count: int) -> List[np.random.Generator]:
    """Independent generators for the independent parts of a case (anatomy, grid, texture, ...).

    Drawing each part from its own stream keeps, say, the anatomy of a seed
    the same when an option changes how many numbers the texture consumes.
    """
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(count)]


def float32_exact(values: Sequence[float]) -> np.ndarray:
    """Round to what a NIfTI header stores (float32), so points computed here match the file read back."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def add_synthetic_arguments(parser: argparse.ArgumentParser, default_cases: int, default_shape: Sequence[int],
                            shape_axes: str) -> None:
    """--cases, --test-cases, --seed and --shape, plus the usual -d/-n/-o/--overwrite."""
    add_output_arguments(parser)
    parser.add_argument("--cases", type=int, default=default_cases,
                        help=f"number of training cases (default {default_cases})")
    parser.add_argument("--test-cases", type=int, default=0,
                        help="number of held-out cases with references, written to imagesTs/labelsTs/poisTs (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data (default 0)")
    parser.add_argument("--shape", type=int, nargs=len(default_shape), default=list(default_shape),
                        metavar=tuple(shape_axes.split()),
                        help=f"voxels per case in numpy order ({shape_axes}) (default {' '.join(map(str, default_shape))})")


def check_shape(shape: Sequence[int], dims: int, minimum: int) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != dims or any(s < minimum for s in shape):
        raise PoiNnunetError(f"shape must be {dims} sizes of at least {minimum} voxels, got {list(shape)}")
    return shape


def write_synthetic_dataset(target: Path, prefix: str, fields: Tuple[Dict[str, str], Dict[str, Any], Any, Dict[str, Any]],
                            make_case: Callable[..., CaseData], num_cases: int, num_test: int, seed: int,
                            overwrite: bool, **case_options: Any) -> Path:
    """Write a validated phantom dataset: ``make_case(case_id, case_seed, **case_options)`` for every case of
    :func:`planned_cases`, through a :class:`DatasetWriter` built from the dataset.json ``fields``
    ``(channels, labels, poi names, extra keys)``; nothing appears unless the whole dataset is valid."""
    target = Path(target)
    channels, labels, names, extra = fields
    with DatasetWriter(target, channels, labels, pois=names, extra=extra, overwrite=overwrite) as writer:
        for case_id, case_seed, split in planned_cases(prefix, num_cases, num_test, seed):
            case = make_case(case_id, case_seed, **case_options)
            case.split = split
            writer.add_case(case)
    return target


def rotation_about(axis: Sequence[float], degrees: float) -> np.ndarray:
    """``(3, 3)`` right-handed rotation by ``degrees`` about ``axis`` (Rodrigues' formula), for the 3D phantoms."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)
