"""``poi_pseudo_masks``: per-plane plans, the whole command on a tiny sparse spine, resume and atomicity.

One module-wide set of nnU-Net folders holds a 3-case synthetic spine of shape (z, y, x) = (32, 24, 20) (three
different sizes, so each plane's slicing axis can be told from the data), made sparse by hand: five voxels per
label present, the ignore label elsewhere, the dense labels kept in ``labelsTr_reference/``. The command runs
three times: with the dataset write failing half-way (nothing may appear), then to completion (it must resume
after the fused masks), then again (it must skip everything).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.factories import use_nnunet_folders

SOURCE_ID = 811
SOURCE = f"Dataset{SOURCE_ID}_SpineClicks"
NEW = f"Dataset{SOURCE_ID + 1}_SpineClicksPseudoMasks"  # the first free id after the source's
SHAPE = (32, 24, 20)
SHORT = ["--epochs", "1", "--iterations_per_epoch", "2", "-device", "cpu", "-np", "1", "-npfp", "1", "--no_pbar"]


def _sparsify(folder: Path, clicks: int = 5, seed: int = 0) -> None:
    """Keep ``clicks`` random voxels of every label present, the ignore label elsewhere; dense labels become
    ``labelsTr_reference/`` (where ``poi_convert clicks`` puts them)."""
    meta = json.loads((folder / "dataset.json").read_text())
    ignore = max(meta["labels"].values()) + 1
    meta["labels"]["ignore"] = ignore
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    shutil.copytree(folder / "labelsTr", folder / "labelsTr_reference")
    rng = np.random.default_rng(seed)
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        dense = sitk.GetArrayFromImage(image)
        sparse = np.full_like(dense, ignore)
        for value in np.unique(dense):
            where = np.argwhere(dense == value)
            pick = where[rng.choice(len(where), min(clicks, len(where)), replace=False)]
            sparse[tuple(pick.T)] = value
        out = sitk.GetImageFromArray(sparse)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(path))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    from dataset_conversion.synthetic_spine import write_spine_dataset

    base = tmp_path_factory.mktemp("pseudo_masks")
    folders = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    for path in folders.values():
        path.mkdir()
    write_spine_dataset(folders["nnUNet_raw"] / SOURCE, num_cases=3, num_test=0, seed=0, shape=SHAPE)
    _sparsify(folders["nnUNet_raw"] / SOURCE)
    return folders


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Tiny networks on a shared 2-core machine run ~10x faster on one thread (no spinning against other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(env: Dict[str, Path], argv) -> str:
    """``poi_pseudo_masks`` in process with the CPU training settings; its stdout (exceptions propagate)."""
    from poi_nnunet.cli.pseudo_masks import main

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, _one_torch_thread(), contextlib.redirect_stdout(out):
        use_nnunet_folders(env, mp)  # sets nnUNet_n_proc_DA=0, which the command must survive while planning
        code = main(argv)
    text = out.getvalue()
    assert code == 0, text
    return text


def _raw_image(env: Dict[str, Path], case: str) -> sitk.Image:
    return sitk.ReadImage(str(env["nnUNet_raw"] / SOURCE / "imagesTr" / f"{case}_0000.nii.gz"))


# ------------------------------------------------------------------------------------------- plane plans
def test_planes_follow_the_direction_matrix() -> None:
    from poi_nnunet.pseudo_masks.planes import planes_for_direction

    identity = {p.name: p.array_axis for p in planes_for_direction(np.eye(3).ravel(), 3)}
    assert identity == {"axial": 0, "coronal": 1, "sagittal": 2}
    # ITK index axes: i runs A-P, j runs S-I (flipped), k runs L-R; array axes are (k, j, i)
    turned = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float)
    assert {p.name: p.array_axis for p in planes_for_direction(turned.ravel(), 3)} == \
        {"axial": 1, "coronal": 2, "sagittal": 0}
    [single] = planes_for_direction(np.eye(2).ravel(), 2)
    assert (single.name, single.array_axis, single.transpose_forward) == ("image", 0, [0, 1, 2])


def test_plane_plans_slice_along_the_chosen_raw_axis(env: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from poi_nnunet.plan import PoiPlan
    from poi_nnunet.pseudo_masks.planes import dataset_planes, plan_plane
    from poi_nnunet.raw_dataset import RawDataset

    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    ds = RawDataset.open(env["nnUNet_raw"] / SOURCE)
    planes = dataset_planes(ds)
    assert [p.name for p in planes] == ["axial", "coronal", "sagittal"]
    with _one_torch_thread():
        for plane in planes:
            plan_plane(ds.path, plane, num_processes=1, num_processes_fingerprint=1, progress=False)
    preprocessed = env["nnUNet_preprocessed"] / SOURCE
    raw_shape = sitk.GetArrayFromImage(_raw_image(env, "spine_000")).shape
    assert raw_shape == SHAPE
    expected_axis = {"axial": 0, "coronal": 1, "sagittal": 2}  # the spine phantom has an identity direction
    first_axes = {}
    for name, axis in expected_axis.items():
        plans = json.loads((preprocessed / f"poiPlans_{name}.json").read_text())
        assert plans["transpose_forward"][0] == axis
        folder = preprocessed / f"poiPlans_{name}_2d"
        data, seg, _, _ = infer_dataset_class(str(folder))(str(folder), ["spine_000"]).load_case("spine_000")
        # 2d resamples in-plane only: the slicing axis keeps the raw image's number of voxels along it
        assert data.shape[1] == raw_shape[axis], (name, data.shape, raw_shape)
        first_axes[name] = data.shape[1]
        configuration = PlansManager(plans).get_configuration("2d")
        plan = PoiPlan.from_configuration(configuration)
        assert plan is not None
        assert len(configuration.patch_size) == 2
    assert sorted(first_axes.values()) == sorted(SHAPE)
    # the dataset's shared fingerprints, one per dataset
    assert (preprocessed / "dataset_fingerprint.json").is_file() and (preprocessed / "poi_fingerprint.json").is_file()


# ------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def failed_run(env: Dict[str, Path]) -> Dict[str, Path]:
    """The command with copying the second case into the new dataset failing (a full disk, a kill)."""
    from poi_nnunet.pseudo_masks import output_dataset

    calls = []
    real = output_dataset.copy_case

    def failing(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError("No space left on device (simulated)")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(output_dataset, "copy_case", failing)
        with pytest.raises(OSError, match="simulated"):
            _run(env, ["-d", str(SOURCE_ID), *SHORT])
    assert len(calls) == 2
    return env


@pytest.fixture(scope="module")
def completed_run(failed_run: Dict[str, Path]) -> str:
    return _run(failed_run, ["-d", str(SOURCE_ID), *SHORT])


def test_a_failed_write_leaves_no_dataset(failed_run: Dict[str, Path]) -> None:
    raw = failed_run["nnUNet_raw"]
    assert sorted(p.name for p in raw.iterdir()) == [SOURCE]  # no new folder, no hidden staging folder
    work = failed_run["nnUNet_results"] / SOURCE / "pseudo_masks"
    assert len(list((work / "probabilities").glob("*/*.npz"))) == 9  # what was finished stays for a re-run
    assert len(list((work / "fused" / "mean").glob("*.nii.gz"))) == 3


def test_the_command_writes_a_valid_dense_dataset(failed_run: Dict[str, Path], completed_run: str) -> None:
    from poi_nnunet.raw_format_checks import validate_raw_dataset

    env = failed_run
    assert "stages run: write; skipped (already done): plan, train, predict, fuse" in completed_run
    target = env["nnUNet_raw"] / NEW
    assert f"pseudo-mask dataset: {target}" in completed_run
    assert f"poi_train {SOURCE_ID + 1} 3d_fullres nnunet" in completed_run
    assert validate_raw_dataset(target, progress=False) == []

    source_meta = json.loads((env["nnUNet_raw"] / SOURCE / "dataset.json").read_text())
    meta = json.loads((target / "dataset.json").read_text())
    expected_labels = {k: v for k, v in source_meta["labels"].items() if k != "ignore"}
    assert meta["labels"] == expected_labels and "ignore" not in meta["labels"]
    assert meta["numTraining"] == 3 and meta["pseudo_masks"]["source"] == SOURCE
    assert meta["pseudo_masks"]["fusion"] == "mean"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (target / "imagesTr").glob("*_0000.nii.gz"))
    assert cases == ["spine_000", "spine_001", "spine_002"]
    for case in cases:
        raw = _raw_image(env, case)
        label = sitk.ReadImage(str(target / "labelsTr" / f"{case}.nii.gz"))
        assert label.GetSize() == raw.GetSize()
        np.testing.assert_allclose(label.GetSpacing(), raw.GetSpacing(), atol=1e-6)  # NIfTI stores float32
        np.testing.assert_allclose(label.GetOrigin(), raw.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(label.GetDirection(), raw.GetDirection(), atol=1e-6)
        values = set(np.unique(sitk.GetArrayFromImage(label)).tolist())
        assert values <= set(expected_labels.values())
        for channel in ("0000", "0001"):
            name = f"{case}_{channel}.nii.gz"
            assert (target / "imagesTr" / name).read_bytes() == \
                (env["nnUNet_raw"] / SOURCE / "imagesTr" / name).read_bytes()
    # the dense references were there, so both fusions and every plane were measured
    dice = json.loads((env["nnUNet_results"] / SOURCE / "pseudo_masks" / "dice.json").read_text())
    assert set(dice["rows"]) == {"axial", "coronal", "sagittal", "mean fused", "mean fused + smoothed",
                                 "vote fused", "vote fused + smoothed"}
    assert meta["pseudo_masks"]["dice_against_reference"] == dice


def test_a_second_run_skips_every_stage(failed_run: Dict[str, Path], completed_run: str) -> None:
    env = failed_run
    results = env["nnUNet_results"] / SOURCE
    watched = sorted(results.glob("*/fold_all/checkpoint_final.pth")) + \
        sorted((results / "pseudo_masks").rglob("*.npz")) + sorted((env["nnUNet_raw"] / NEW).rglob("*.nii.gz"))
    assert len(watched) == 3 + 9 + 9
    before = {p: os.stat(p).st_mtime_ns for p in watched}
    text = _run(env, ["-d", str(SOURCE_ID), *SHORT])
    assert "stages run: none; skipped (already done): plan, train, predict, fuse, write" in text
    for stage in ("plan", "train", "predict", "fuse", "write"):
        assert f"[{stage}] skipped" in text
    assert {p: os.stat(p).st_mtime_ns for p in watched} == before


def test_a_retrained_plane_model_is_predicted_and_fused_again_and_the_dataset_kept(
        failed_run: Dict[str, Path], completed_run: str) -> None:
    env = failed_run
    results = env["nnUNet_results"] / SOURCE
    checkpoint = sorted(results.glob("*_axial__2d/fold_all/checkpoint_final.pth"))[0]
    stat = os.stat(checkpoint)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # as if trained again
    work = results / "pseudo_masks"
    axial, coronal = sorted((work / "probabilities" / "axial").glob("*.npz")), \
        sorted((work / "probabilities" / "coronal").glob("*.npz"))
    before = {p: os.stat(p).st_mtime_ns for p in axial + coronal}
    labels = sorted((env["nnUNet_raw"] / NEW / "labelsTr").glob("*.nii.gz"))
    written = {p: p.read_bytes() for p in labels}
    text = _run(env, ["-d", str(SOURCE_ID), *SHORT])
    assert "axial: the model changed" in text and "stages run: predict, fuse;" in text
    assert all(os.stat(p).st_mtime_ns != before[p] for p in axial)  # redone
    assert all(os.stat(p).st_mtime_ns == before[p] for p in coronal)  # kept
    assert "WARNING" in text and {p: p.read_bytes() for p in labels} == written  # never overwritten

def test_an_existing_other_dataset_is_never_overwritten(failed_run: Dict[str, Path], completed_run: str) -> None:
    from poi_nnunet.cli.pseudo_masks import main

    env = failed_run
    other = env["nnUNet_raw"] / f"Dataset{SOURCE_ID + 5}_SpineClicksPseudoMasks"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    try:
        with pytest.MonkeyPatch.context() as mp:
            use_nnunet_folders(env, mp)
            assert main(["-d", str(SOURCE_ID), "--output-id", str(SOURCE_ID + 5), *SHORT]) == 2
            # the dataset this module made, asked for with other settings
            assert main(["-d", str(SOURCE_ID), "--output-id", str(SOURCE_ID + 1), "--fusion", "vote", *SHORT]) == 2
        assert json.loads((other / "dataset.json").read_text()) == {"labels": {"background": 0}}
        assert json.loads((env["nnUNet_raw"] / NEW / "dataset.json").read_text())["pseudo_masks"]["fusion"] == "mean"
    finally:
        shutil.rmtree(other)


def test_a_dense_dataset_is_refused(tmp_path: Path) -> None:
    from poi_nnunet.errors import PoiNnunetError
    from poi_nnunet.pseudo_masks.pipeline import PseudoMaskOptions, run_pseudo_masks
    from tests.factories import write_tiny_dataset

    folder = write_tiny_dataset(tmp_path)
    with pytest.raises(PoiNnunetError, match="no 'ignore' label"):
        run_pseudo_masks(folder, PseudoMaskOptions(device="cpu"))
