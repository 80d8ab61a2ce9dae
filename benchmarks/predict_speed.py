"""Prediction wall time: ``poi_predict`` against nnU-Net's own prediction, same model, same cases.

For each dimension (``2d``: the synthetic X-ray, ``poi_convert synthetic-xray``, configuration
``2d``; ``3d``: the synthetic spine, ``poi_convert synthetic-spine``, configuration ``3d_fullres``)
a tiny ``heatmap`` model is trained (``poi_train ... -f all --epochs 1 --iterations_per_epoch 2
-device cpu --no_validation``; only its speed matters, not its accuracy) and the first ``--cases``
held-out images (``imagesTs``) are predicted, with test-time mirroring on and off, by:

* ours: ``list_input_cases`` + ``check_dimensionality`` + ``predict_input_cases`` with the predictor of
  ``load_poi_model`` (:mod:`poi_nnunet.trained_models`) (what ``poi_predict`` runs per case: list and check the
  inputs, nnU-Net's ``DefaultPreprocessor.run_case``, sliding window over segmentation + heatmap
  outputs with left/right-aware mirroring, heatmap decoding, nnU-Net's segmentation export, and
  ``<case>.nii.gz`` + ``<case>.mrk.json`` + ``<case>.json`` written);
* nnU-Net: ``nnUNetPredictor.predict_from_files_sequential`` (segmentation only), initialised with
  ``manual_initialization`` on the *same network object* our predictor built and loaded (wrapped so
  that nnU-Net sees only its segmentation outputs: the heatmap head still runs, so both sides pay
  the same forward passes), the same fold parameters, mirror axes, plans, tile step (0.5), Gaussian
  weighting and device (cpu). The sequential path is nnU-Net's in-process one-case-at-a-time
  prediction (``preprocessor.run_case`` -> ``predict_logits_from_preprocessed_data`` ->
  ``export_prediction_from_logits``), the same structure as ours; ``predict_from_files`` with one
  preprocessing and one export process would add worker start-up and inter-process copies that
  ours does not have. It is used only where the installed nnU-Net lacks the sequential path.

Both write their outputs to disk (separate folders, overwritten each repeat). The model and the
predictors are built once, outside the timing (as a batch of cases amortises them); each timed call
predicts all ``--cases`` cases. Ours is given the input folder and lists and checks it inside the
timing, as ``poi_predict`` does; nnU-Net is given its lists of files and output names, made once
outside the timing: given a folder, nnU-Net would list it with a pool of 12 processes on every call
(``create_lists_from_splitted_dataset_folder``), which costs more than the prediction of a small case
and would flatter the ratio. ``torch.set_num_threads(--threads)`` is set, and ``nnUNet_def_n_proc``
to the same number in this process, so that nnU-Net's thread clamp in
``predict_logits_from_preprocessed_data`` and its export threads are the same on both sides. After one warm-up call per side (on one case), ``--repeats`` timed calls per side
alternate their order (ours first on even repeats, nnU-Net first on odd ones); reported: the
median per case and the ratio ours / nnU-Net of the medians.

Where the ratio is above ``--breakdown_above`` (default 1.15), one more call per side runs with
timers wrapped around the stages (class or instance attributes replaced for that call only):
preprocessing (``DefaultPreprocessor.run_case``), forward passes (the network's ``forward``; their
count shows the mirrored passes), mirror merge (``_internal_maybe_mirror_and_predict`` minus the
forward passes: flipping inputs and outputs back and summing, for ours over the segmentation + heatmap
channels and with the left/right channel permutation), accumulation (``predict_logits_from_preprocessed_data``
minus that: loading the fold's weights, Gaussian tile weighting and the float16 accumulator, as wide as
the network's outputs), decoding (ours: ``predict_case`` minus the sliding window),
segmentation resampling (``convert_predicted_logits_to_segmentation_with_correct_shape``), the
segmentation file (the reader/writer's ``write_seg``), and everything else (ours: the point and
markups files, input checks; nnU-Net: its run files).

Set-up from nothing into ``--work`` (raw/, preprocessed/, results/, timing/): conversion, planning
(``poi_plan_and_preprocess -np 1 -npfp 1``, without ``nnUNet_n_proc_DA``/``nnUNet_def_n_proc``) and
training (with ``nnUNet_n_proc_DA=0 nnUNet_def_n_proc=1``), each in a subprocess and each skipped
when its result exists, so a re-run only measures (``--shape_2d``/``--shape_3d`` only act on a new
``--work``). CPU budget: ``--width_divisor_3d N`` trains and predicts the 3d model with the plans'
feature widths divided by N (a plans copy ``poiPlansW<N>`` on the same preprocessed data). Narrower
networks make the forward passes cheaper but not what comes after them (mirror merge, accumulation,
export), so the ratio is then higher than at the planned widths; the results also land in
``--work``/predict_speed.json.

    python benchmarks/predict_speed.py --work /tmp/predict_speed --cases 3 --repeats 3 --dims 2d 3d --threads 1 \
        --shape_3d 48 32 32 --width_divisor_3d 4
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIMS = {
    # dim: (dataset id, name, converter, configuration)
    "2d": (502, "SyntheticXray", "synthetic-xray", "2d"),
    "3d": (501, "SyntheticSpine", "synthetic-spine", "3d_fullres"),
}
TRAINER = "heatmap"
STAGES = ("preprocess", "forward passes", "mirror merge", "accumulation", "decoding", "seg resample", "seg write",
          "other")
FOLD = "all"


# ---------------------------------------------------------------------------------------------- set-up
def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(command: List[str], env: Dict[str, str], what: str) -> None:
    print(f"  {what}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-5000:])
        raise SystemExit(f"{what} failed (exit {out.returncode})")
    print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)


def plans_name(width_divisor: int) -> str:
    return "poiPlans" if width_divisor == 1 else f"poiPlansW{width_divisor}"


def narrow_plans(folder: Path, configuration: str, width_divisor: int) -> str:
    """A copy of ``poiPlans`` with the feature widths divided (same preprocessed data, same POI files)."""
    name = plans_name(width_divisor)
    target = folder / f"{name}.json"
    if width_divisor != 1 and not target.is_file():
        plans = json.loads((folder / "poiPlans.json").read_text())
        plans["plans_name"] = name
        arch = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = [max(4, int(f) // width_divisor) for f in arch["features_per_stage"]]
        target.write_text(json.dumps(plans, indent=1))
    return name


def setup(work: Path, dim: str, train_cases: int, test_cases: int, shape: List[int], width_divisor: int) -> None:
    """Convert, plan and train what is missing under ``work``."""
    dataset_id, name, converter, configuration = DIMS[dim]
    dataset = f"Dataset{dataset_id}_{name}"
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_n_proc_DA", "nnUNet_def_n_proc")}
    env.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"))
    raw = work / "raw" / dataset
    if not (raw / "dataset.json").is_file():
        command = [_bin("poi_convert"), converter, "-d", str(dataset_id), "-n", name, "--cases", str(train_cases),
                   "--test-cases", str(test_cases)]
        if shape:
            command += ["--shape", *map(str, shape)]
        _run(command, env, f"{dim} convert")
    have = len(list((raw / "imagesTs").glob("*_0000.nii.gz")))
    if have < test_cases:
        raise SystemExit(f"{raw / 'imagesTs'} has {have} case(s), --cases asks for {test_cases}: use a new --work "
                         "or fewer cases")
    if not (work / "preprocessed" / dataset / "poiPlans.json").is_file():
        _run([_bin("poi_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp",
              "1", "--no_pbar"], env, f"{dim} plan and preprocess")
    plans = narrow_plans(work / "preprocessed" / dataset, configuration, width_divisor)
    folder = work / "results" / dataset / f"PoiHeatmapTrainer__{plans}__{configuration}" / f"fold_{FOLD}"
    if not (folder / "checkpoint_final.pth").is_file():
        train_env = {**env, "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"}
        _run([_bin("poi_train"), str(dataset_id), configuration, TRAINER, "-f", FOLD, "-p", plans, "-device", "cpu",
              "--epochs", "1", "--iterations_per_epoch", "2", "--no_validation"], train_env, f"{dim} train")


def input_folders(work: Path, dim: str, cases: int) -> Dict[str, Path]:
    """``timing/<dim>/inputs`` (the first ``cases`` test cases) and ``warmup`` (the first one), copied afresh."""
    dataset_id, name, _, _ = DIMS[dim]
    source = work / "raw" / f"Dataset{dataset_id}_{name}" / "imagesTs"
    ids = sorted({p.name[: -len("_0000.nii.gz")] for p in source.glob("*_0000.nii.gz")})[:cases]
    folders = {}
    for label, chosen in (("inputs", ids), ("warmup", ids[:1])):
        folder = work / "timing" / dim / label
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for case in chosen:
            for f in source.glob(f"{case}_*.nii.gz"):
                shutil.copy2(f, folder / f.name)
        folders[label] = folder
    return folders


# ---------------------------------------------------------------------------------------------- predictors
def _segmentation_only(network, num_segmentation: int):
    """The same network object, seen by nnU-Net as a segmentation network (its first outputs)."""
    from torch import nn

    class SegmentationOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = network

        def forward(self, x):
            return self.inner(x)[:, :num_segmentation]

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # nnU-Net loads folds
            return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)

    return SegmentationOnly()


def predictors(dim: str, tta: bool, plans: str):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from poi_nnunet.trained_models import load_poi_model

    dataset_id, _, _, configuration = DIMS[dim]
    with contextlib.redirect_stdout(io.StringIO()):
        ours = load_poi_model(str(dataset_id), configuration, TRAINER, folds=[FOLD], device="cpu",
                              use_mirroring=tta, tile_step_size=0.5, plans=plans)
        theirs = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                 perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                 verbose_preprocessing=False, allow_tqdm=False)
    num_seg = ours.label_manager.num_segmentation_heads
    theirs.manual_initialization(_segmentation_only(ours.network, num_seg), ours.plans_manager,
                                 ours.configuration_manager, ours.list_of_parameters, ours.dataset_json,
                                 ours.trainer_name, ours.allowed_mirroring_axes)
    return ours, theirs


def runners(ours, theirs, out: Path) -> Dict[str, Callable[[Path], None]]:
    from poi_nnunet.inference import predict_input_cases
    from poi_nnunet.inference.inputs import check_dimensionality, list_input_cases

    def run_ours(folder: Path) -> None:
        """What poi_predict runs: list and check the inputs, then predict and write every case."""
        model = ours.model_folder
        cases = list_input_cases(folder, model.file_ending, model.num_input_channels)
        check_dimensionality(cases, model.configuration, model.configuration_axes, model.trained_on_2d_images)
        predict_input_cases(ours, cases, out / "ours", overwrite=True, progress=False)

    listed: Dict[Path, tuple] = {}

    def nnunet_lists(folder: Path) -> tuple:
        """nnU-Net's input lists and output names, made once outside the timing (see the module docstring)."""
        if folder not in listed:
            from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

            ending = theirs.dataset_json["file_ending"]
            ids = sorted({p.name[: -len("_0000" + ending)] for p in folder.glob(f"*_0000{ending}")})
            files = create_lists_from_splitted_dataset_folder(str(folder), ending, ids, num_processes=1)
            target = out / "nnunet"
            target.mkdir(parents=True, exist_ok=True)
            listed[folder] = (files, [str(target / case) for case in ids])
        return listed[folder]

    def run_theirs(folder: Path) -> None:
        files, outputs = nnunet_lists(folder)
        if hasattr(theirs, "predict_from_files_sequential"):
            theirs.predict_from_files_sequential(files, outputs, save_probabilities=False, overwrite=True)
        else:
            theirs.predict_from_files(files, outputs, save_probabilities=False, overwrite=True,
                                      num_processes_preprocessing=1, num_processes_segmentation_export=1)

    return {"ours": run_ours, "nnunet": run_theirs}


def timed(fn: Callable[[Path], None], folder: Path) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints per case; both sides stay quiet
        start = time.perf_counter()
        fn(folder)
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- breakdown
@contextlib.contextmanager
def _patched(owner, name: str, make: Callable[[Callable], Callable]):
    had = name in vars(owner) if isinstance(owner, type) else name in owner.__dict__
    old = getattr(owner, name)
    setattr(owner, name, make(old))
    try:
        yield
    finally:
        if had:
            setattr(owner, name, old)
        else:
            delattr(owner, name)


def breakdown(side: str, predictor, run: Callable[[Path], None], folder: Path) -> Dict[str, float]:
    """One call of ``run`` with stage timers; seconds per stage over all cases (and the forward count)."""
    import nnunetv2.inference.export_prediction as export_module
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    acc: Dict[str, float] = defaultdict(float)

    def timer(key: str, method: bool = False):
        def make(fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    acc[key] += time.perf_counter() - start
                    if key == "forward":
                        acc["forward_calls"] += 1
            return wrapper
        return make

    network = predictor.network.inner if side == "nnunet" else predictor.network
    writer = predictor.plans_manager.image_reader_writer_class
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(DefaultPreprocessor, "run_case", timer("preprocess")))
        stack.enter_context(_patched(network, "forward", timer("forward")))
        stack.enter_context(_patched(predictor, "predict_logits_from_preprocessed_data", timer("sliding_window")))
        stack.enter_context(_patched(predictor, "_internal_maybe_mirror_and_predict", timer("mirror")))
        if side == "ours":
            stack.enter_context(_patched(predictor, "predict_case", timer("predict_case")))
        stack.enter_context(_patched(export_module, "convert_predicted_logits_to_segmentation_with_correct_shape",
                                     timer("seg_resample")))
        stack.enter_context(_patched(writer, "write_seg", timer("seg_write")))
        total = timed(run, folder)
    stages = {
        "preprocess": acc["preprocess"],
        "forward passes": acc["forward"],
        "mirror merge": acc["mirror"] - acc["forward"],
        "accumulation": acc["sliding_window"] - acc["mirror"],
        "decoding": acc["predict_case"] - acc["sliding_window"] if side == "ours" else 0.0,
        "seg resample": acc["seg_resample"],
        "seg write": acc["seg_write"],
    }
    stages["other"] = total - sum(stages.values())
    stages["total"] = total
    stages["forward_calls"] = acc["forward_calls"]
    return stages


def profile_top(run: Callable[[Path], None], folder: Path, top: int = 12) -> str:
    """cProfile of one call: the functions with the most own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()):
        profiler.enable()
        run(folder)
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    lines = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join(lines[start:start + top + 1])


# ---------------------------------------------------------------------------------------------- main
def describe(ours, folder: Path) -> str:
    cm = ours.configuration_manager
    first = sorted(folder.glob("*_0000.nii.gz"))[0]
    import SimpleITK as sitk

    size = sitk.ReadImage(str(first)).GetSize()[::-1]
    seg = ours.label_manager.num_segmentation_heads
    layout = getattr(ours, "layout", None)
    heat = f"{layout.num_channels}" if layout is not None else "?"
    widths = cm.network_arch_init_kwargs.get("features_per_stage")
    return (f"image {list(size)}, patch {list(cm.patch_size)}, widths {list(widths)}, outputs {seg} segmentation + "
            f"{heat} heatmaps, mirror axes {tuple(ours.allowed_mirroring_axes or ())}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/predict_speed"))
    parser.add_argument("--cases", type=int, default=3, help="test cases predicted per timed call (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side and setting (default 3)")
    parser.add_argument("--dims", nargs="+", default=["2d", "3d"], choices=sorted(DIMS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--train_cases", type=int, default=4, help="training cases of a new dataset (default 4)")
    parser.add_argument("--shape_2d", type=int, nargs=2, default=None, metavar=("Y", "X"),
                        help="X-ray size of a new dataset (converter default 128 128)")
    parser.add_argument("--shape_3d", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="spine size of a new dataset (converter default 96 64 64)")
    parser.add_argument("--tta", nargs="+", default=["off", "on"], choices=("off", "on"),
                        help="test-time mirroring settings to measure (default off on)")
    parser.add_argument("--width_divisor_3d", type=int, default=1,
                        help="3d: divide the plans' feature widths by this into a plans copy (poiPlansW<N>) used for "
                        "training and both predictions (default 1: the plans as planned); 2d always runs as planned")
    parser.add_argument("--breakdown_above", type=float, default=1.15,
                        help="time the stages of settings whose ratio is above this (default 1.15; 0: always)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions of both sides for those")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    for sub in ("raw", "preprocessed", "results"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                      nnUNet_results=str(work / "results"), nnUNet_def_n_proc=str(args.threads))
    os.environ.pop("nnUNet_n_proc_DA", None)
    divisor = {"2d": 1, "3d": args.width_divisor_3d}
    for dim in args.dims:
        print(f"set-up {dim} in {work}", flush=True)
        setup(work, dim, args.train_cases, args.cases, args.shape_2d if dim == "2d" else args.shape_3d,
              divisor[dim])

    import torch

    torch.set_num_threads(args.threads)
    rows, details = [], []
    for dim in args.dims:
        folders = input_folders(work, dim, args.cases)
        for tta in [t == "on" for t in args.tta]:
            ours, theirs = predictors(dim, tta, plans_name(divisor[dim]))
            out = work / "timing" / dim / ("tta" if tta else "notta")
            run = runners(ours, theirs, out)
            for side in ("ours", "nnunet"):  # warm-up: imports, caches, first allocations
                timed(run[side], folders["warmup"])
            times: Dict[str, List[float]] = {"ours": [], "nnunet": []}
            for r in range(args.repeats):
                for side in (("ours", "nnunet") if r % 2 == 0 else ("nnunet", "ours")):
                    times[side].append(timed(run[side], folders["inputs"]))
            med = {s: statistics.median(v) / args.cases for s, v in times.items()}
            row = {"dim": dim, "tta": tta, "ours_s": med["ours"], "nnunet_s": med["nnunet"],
                   "ratio": med["ours"] / med["nnunet"], "times": times, "setting": describe(ours, folders["inputs"])}
            rows.append(row)
            print(f"{dim} TTA {'on ' if tta else 'off'}: ours {med['ours']:.3f} s/case, nnU-Net "
                  f"{med['nnunet']:.3f} s/case, ratio {row['ratio']:.2f}  ({row['setting']})", flush=True)
            if row["ratio"] > args.breakdown_above:
                parts = {side: breakdown(side, p, run[side], folders["inputs"])
                         for side, p in (("ours", ours), ("nnunet", theirs))}
                profile = {side: profile_top(run[side], folders["inputs"]) for side in run} if args.profile else {}
                details.append((row, parts, profile))
                row["breakdown"] = parts

    print(f"\nseconds per case, median of {args.repeats} calls of {args.cases} case(s) each after a warm-up; "
          f"device cpu, {args.threads} thread(s); nnU-Net: "
          f"{'predict_from_files_sequential' if hasattr(theirs, 'predict_from_files_sequential') else 'predict_from_files (1+1 processes)'}")
    print(f"{'dim':4s} {'TTA':4s} {'ours s/case':>12s} {'nnU-Net s/case':>15s} {'ratio':>6s}   spread ours / nnU-Net (s/call)")
    for r in rows:
        spread = " / ".join(f"{min(v):.2f}-{max(v):.2f}" for v in r["times"].values())
        print(f"{r['dim']:4s} {'on' if r['tta'] else 'off':4s} {r['ours_s']:12.3f} {r['nnunet_s']:15.3f} "
              f"{r['ratio']:6.2f}   {spread}")
    for dim in dict.fromkeys(r["dim"] for r in rows):
        print(f"  {dim}: {next(r['setting'] for r in rows if r['dim'] == dim)}")
    for row, parts, profile in details:
        print(f"\nwhere the time goes, {row['dim']} TTA {'on' if row['tta'] else 'off'} (ratio {row['ratio']:.2f}; "
              f"one instrumented call, s/case):")
        print(f"  {'stage':16s} {'ours':>8s} {'nnU-Net':>8s} {'extra':>8s}")
        for stage in STAGES + ("total",):
            a, b = parts["ours"][stage] / args.cases, parts["nnunet"][stage] / args.cases
            print(f"  {stage:16s} {a:8.3f} {b:8.3f} {a - b:+8.3f}")
        print(f"  forward passes per case: ours {parts['ours']['forward_calls'] / args.cases:.0f}, "
              f"nnU-Net {parts['nnunet']['forward_calls'] / args.cases:.0f}")
        # the forward passes are the same work on both sides: their difference is the machine's noise
        extra = sum(parts["ours"][k] - parts["nnunet"][k] for k in STAGES if k != "forward passes") / args.cases
        base = parts["nnunet"]["total"] / args.cases
        print(f"  extra outside the forward passes: {extra:+.3f} s/case ({100 * extra / base:+.0f}% of nnU-Net's "
              f"instrumented total)")
        for side, text in profile.items():
            print(f"  cProfile of {side} (one call, top own time):\n{text}")
    (work / "predict_speed.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
