"""Tiny datasets built through the real writer, for tests that need a valid starting point."""
from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter


def tiny_case(case_id: str, seed: int, dim: int = 3, channels: int = 1, with_label: bool = True) -> CaseData:
    """A small image with a box-shaped structure (label 1) and two POIs on it."""
    rng = np.random.default_rng(seed)
    shape = (10, 12, 14)[:dim] if dim == 3 else (16, 18)
    spacing = (0.8, 1.0, 2.0)[:dim]
    images = []
    for _ in range(channels):
        img = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32))
        img.SetSpacing(spacing)
        img.SetOrigin((10.0, -5.0, 3.0)[:dim])
        images.append(img)
    geo = ImageGeometry.from_image(images[0])
    label = None
    if with_label:
        arr = np.zeros(shape, dtype=np.uint8)
        arr[tuple(slice(2, s - 2) for s in shape)] = 1
        label = sitk.GetImageFromArray(arr)
        label.CopyInformation(images[0])
    structure = 1 if with_label else 0
    centre = np.array(shape[::-1], dtype=float) / 2  # ITK index order
    points = [
        Poi(structure, 1, tuple(geo.index_to_world(centre + 0.3))),
        Poi(structure, 2, tuple(geo.index_to_world(centre - 1.7))),
    ]
    return CaseData(case_id, images, label, PoiSet(points))


def write_tiny_dataset(root: Path, name: str = "Dataset990_Tiny", cases: int = 2, dim: int = 3,
                       channels: int = 1, with_label: bool = True, validate: bool = True) -> Path:
    target = root / name
    labels = {"background": 0, "box": 1} if with_label else {"background": 0}
    channel_names = {str(c): ("CT" if c == 0 else "noNorm") for c in range(channels)}
    with DatasetWriter(target, channel_names, labels, pois={1: "tip", 2: "corner"}, validate=validate) as writer:
        for i in range(cases):
            writer.add_case(tiny_case(f"case_{i:03d}", seed=i, dim=dim, channels=channels, with_label=with_label))
    return target


def write_verse_ids_dataset(root: Path, name: str = "Dataset996_VerseIds", cases: int = 2) -> Path:
    """A 3D dataset labelled with VerSe ids as-is: ``{"background": 0, "L1": 20, "L2": 21}``, nothing below.

    nnU-Net rejects such labels only when training (values must be 0, 1, 2,
    ...), so the writer's own check is skipped to get it onto disk.
    """
    target = root / name
    with DatasetWriter(target, {"0": "CT"}, {"background": 0, "L1": 20, "L2": 21}, pois={1: "tip", 2: "corner"},
                       validate=False) as writer:
        for i in range(cases):
            case = tiny_case(f"case_{i:03d}", seed=i)
            arr = sitk.GetArrayFromImage(case.label)
            arr[arr == 1] = 20
            arr[:2, :2, :2] = 21
            label = sitk.GetImageFromArray(arr)
            label.CopyInformation(case.label)
            case.label = label
            case.pois.points = [replace(p, structure=20) for p in case.pois.points]
            writer.add_case(case)
    return target


def use_nnunet_folders(folders: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the nnUNet_* variables at a module's prepared ``folders`` (``{"nnUNet_raw": path, ...}``)
    and set nnU-Net's single-process CPU settings, which make tiny training runs several times faster."""
    for key, value in folders.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_def_n_proc", "1")


@contextlib.contextmanager
def fresh_nnunet_folders(base: Path) -> Iterator[dict]:
    """New ``raw``, ``pre`` and ``res`` folders under ``base``, exported as nnU-Net's three variables while inside;
    yields ``{"nnUNet_raw": path, ...}`` (for module fixtures that write and plan datasets once)."""
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for key, path in env.items():
            path.mkdir()
            mp.setenv(key, str(path))
        yield env


def planned_xray_and_spine(base: Path, xray: int, spine: int, xray_cases: int, spine_cases: int,
                           xray_shape=(48, 48), spine_shape=(32, 24, 24), num_test: int = 0,
                           spine_seed: int = 0) -> dict:
    """nnU-Net folders under ``base`` with the X-ray phantom (``Dataset<xray>_Xray``, planned 2d) and the spine
    phantom (``Dataset<spine>_Spine``, planned 3d_fullres); returns ``{"nnUNet_raw": path, ...}``."""
    from dataset_conversion.synthetic_spine import write_spine_dataset
    from dataset_conversion.synthetic_xray import write_xray_dataset
    from poi_nnunet.cli.plan_and_preprocess import main as plan_main

    with fresh_nnunet_folders(base) as env:
        write_xray_dataset(env["nnUNet_raw"] / f"Dataset{xray}_Xray", num_cases=xray_cases, num_test=num_test,
                           shape=tuple(xray_shape))
        write_spine_dataset(env["nnUNet_raw"] / f"Dataset{spine}_Spine", num_cases=spine_cases, num_test=min(num_test, 1),
                            seed=spine_seed, shape=tuple(spine_shape))
        for dataset, config in ((xray, "2d"), (spine, "3d_fullres")):
            assert plan_main(["-d", str(dataset), "-c", config, "-np", "1", "-npfp", "1", "--no_pbar"]) == 0
    return env


def assert_deterministic_by_seed(write, tmp_path: Path, n_files: int, **options) -> None:
    """A phantom writer ``write(target, num_cases=2, seed=..., **options) -> root`` gives the same bytes for the
    same seed and different files (all but dataset.json) for another seed; it writes ``n_files`` files."""
    def files(seed: int, name: str) -> dict:
        root = write(tmp_path / name, num_cases=2, seed=seed, **options)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = files(2, "a"), files(2, "b"), files(3, "c")
    assert a.keys() == b.keys() == c.keys() and len(a) == n_files
    assert a == b
    for name in a:
        if name != "dataset.json":
            assert a[name] != c[name], name
