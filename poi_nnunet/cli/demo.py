"""``poi_demo``: the whole pipeline on the embedded synthetic data, in a workspace folder.

It generates the synthetic 3D spine and 2D X-ray datasets in the unified raw
format and validates them, then runs the used-by path on one of them (the 2D
X-ray by default: 750 training iterations, the whole demo 5 minutes on an idle
2-core CPU as measured, to a median point error of about one 5.5 mm pixel):
``poi_plan_and_preprocess``, ``poi_train`` with the ``heatmap`` trainer,
``poi_predict`` on the held-out cases and ``poi_evaluate``, and prints the
table. nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``) are placed inside the workspace unless they are already
set, so the demo never touches a user's real data.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..errors import PoiNnunetError
from ..pois import read_poi_file
from ..raw_dataset import RawDataset, dataset_folder_name
from ..raw_format_checks import check_raw_dataset
from .common import add_device_argument, reports_user_errors, resolve_device

SPINE_ID, SPINE_NAME = 501, "SyntheticSpine"
XRAY_ID, XRAY_NAME = 502, "SyntheticXray"
# (epochs, iterations per epoch). The X-ray's 750 iterations: its learning curve (benchmarks/learning_speed.py
# --phantoms demo_xray) fell from 10.8 mm median error at 250 iterations to 6.5 at 750 and 5.0 at 1500, and a
# believable error in minutes is worth more to a first look than a slightly better one in twice the time.
DEMO_SCHEDULE = {"xray": (30, 25), "spine": (20, 10)}
DEMO_TARGETS = {"xray": (XRAY_ID, "2d"), "spine": (SPINE_ID, "3d_fullres")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poi_demo",
        description="Generate the synthetic 3D spine (Dataset501) and 2D X-ray (Dataset502) phantoms in the unified "
        "raw format and validate them; then (unless --train none) plan, TRAIN the heatmap trainer, predict the "
        "held-out cases and evaluate them, printing the error table. The default X-ray run trains 750 iterations: "
        "about 5 minutes in all on an idle 2-core CPU (measured 5m05s; longer beside other jobs), with progress "
        "and the time left printed each epoch. Uses nnU-Net's folders from the environment if set, otherwise "
        "creates them under the workspace.",
    )
    parser.add_argument("-w", "--workspace", default="poi_demo_workspace",
                        help="folder for the demo's data (default: ./poi_demo_workspace)")
    parser.add_argument("--cases-3d", type=int, default=20, help="training cases of the 3D spine (default 20)")
    parser.add_argument("--cases-2d", type=int, default=100, help="training cases of the 2D X-ray (default 100)")
    parser.add_argument("--test-cases", type=int, default=5, help="held-out cases per dataset (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the phantoms (default 0)")
    parser.add_argument("--xray-size", type=int, default=64,
                        help="X-ray phantom size in pixels (default 64, about 5.5 mm pixels: small enough to train "
                        "on a CPU in minutes; 128 is the phantom's full size)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate datasets that already exist")
    parser.add_argument("--train", choices=("xray", "spine", "none"), default="xray",
                        help="which dataset to plan, train, predict and evaluate (default xray; none stops after "
                        "generating and validating)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default {DEMO_SCHEDULE['xray'][0]} for xray, "
                        f"{DEMO_SCHEDULE['spine'][0]} for spine)")
    parser.add_argument("--iterations_per_epoch", type=int, default=None,
                        help=f"training iterations per epoch (default {DEMO_SCHEDULE['xray'][1]} for xray, "
                        f"{DEMO_SCHEDULE['spine'][1]} for spine)")
    add_device_argument(parser, "train and predict on")
    return parser


def nnunet_environment(workspace: Path) -> Dict[str, Path]:
    """Use the user's nnU-Net folders when set, else folders inside the workspace (set for this process)."""
    folders = {}
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        if not os.environ.get(var):
            os.environ[var] = str((workspace / sub).resolve())
        folders[var] = Path(os.environ[var])
        folders[var].mkdir(parents=True, exist_ok=True)
    return folders


def describe(ds: RawDataset) -> str:
    cases_tr, cases_ts = ds.case_ids("Tr"), ds.case_ids("Ts")
    n_points = sum(len(read_poi_file(ds.poi_file(c))) for c in cases_tr)
    labels = len(ds.labels) - 1
    return (f"{ds.path.name}: {len(cases_tr)} training + {len(cases_ts)} test cases, "
            f"{ds.num_channels} channel(s) {list(ds.channel_names.values())}, {labels} label(s), "
            f"{len(ds.poi_names)} POI id(s), {n_points / max(len(cases_tr), 1):.1f} points per training case")


def generate(raw: Path, args: argparse.Namespace) -> Dict[str, Path]:
    from dataset_conversion.synthetic_spine import write_spine_dataset
    from dataset_conversion.synthetic_xray import write_xray_dataset

    made = {}
    jobs = (
        ("3D spine", SPINE_ID, SPINE_NAME, write_spine_dataset, args.cases_3d, {}),
        ("2D X-ray", XRAY_ID, XRAY_NAME, write_xray_dataset, args.cases_2d, {"shape": (args.xray_size,) * 2}),
    )
    for label, ds_id, name, writer, cases, options in jobs:
        target = raw / dataset_folder_name(ds_id, name)
        if target.exists() and not args.overwrite:
            print(f"[{label}] {target} exists, reusing it (--overwrite regenerates)")
        else:
            start = time.perf_counter()
            writer(target, num_cases=cases, seed=args.seed, num_test=args.test_cases, overwrite=args.overwrite,
                   **options)
            print(f"[{label}] generated {target} in {time.perf_counter() - start:.1f} s")
        made[label] = target
    return made


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    workspace = Path(args.workspace).resolve()  # every path the demo prints is absolute
    folders = nnunet_environment(workspace)
    made = generate(folders["nnUNet_raw"], args)
    print("\nvalidating ...")
    for label, path in made.items():
        ds = check_raw_dataset(path)
        print(f"  [{label}] valid. {describe(ds)}")
    if args.train != "none":
        run_pipeline(args, made["3D spine" if args.train == "spine" else "2D X-ray"], workspace)
    print("\nnnU-Net folders used:")
    for var, path in folders.items():
        print(f"  {var}={path}")
    return 0


def run_pipeline(args: argparse.Namespace, raw_folder: Path, workspace: Path) -> dict:
    """Plan, train, predict the held-out cases and evaluate them, saying where everything goes."""
    from ..evaluation import evaluate_folders
    from ..evaluation.report import format_table
    from . import predict as poi_predict
    from ..preprocessing.pipeline import plan_and_preprocess
    from ..trainer_factory import build_trainer, run_fold

    dataset_id, configuration = DEMO_TARGETS[args.train]
    epochs = args.epochs or DEMO_SCHEDULE[args.train][0]
    iterations = args.iterations_per_epoch or DEMO_SCHEDULE[args.train][1]
    device = resolve_device(args.device)
    step = _stepper()
    step(f"poi_plan_and_preprocess -d {dataset_id} -c {configuration}")
    plan_and_preprocess(str(dataset_id), configurations=[configuration], num_processes=[2])
    if device == "cpu":
        # one process and no augmentation workers: on a small CPU, worker processes only compete for cores
        # (set only now: nnU-Net's planner uses nnUNet_n_proc_DA as its thread count)
        os.environ.setdefault("nnUNet_n_proc_DA", "0")
        os.environ.setdefault("nnUNet_def_n_proc", "1")
    step(f"poi_train {dataset_id} {configuration} heatmap -f 0 -device {device} "
         f"--epochs {epochs} --iterations_per_epoch {iterations}")
    trainer = build_trainer(str(dataset_id), configuration, "heatmap", 0, "poiPlans", device,
                            epochs=epochs, iterations_per_epoch=iterations)
    run_fold(trainer, validate=False)
    predictions = workspace / f"predictions_{args.train}"
    predict_args = ["-i", str(raw_folder / "imagesTs"), "-o", str(predictions), "-d", str(dataset_id),
                    "-c", configuration, "-tr", "heatmap", "-f", "0", "-device", device, "--overwrite"]
    step("poi_predict " + " ".join(predict_args))
    if poi_predict.main(predict_args) != 0:
        raise PoiNnunetError("poi_predict failed (see above)")
    step(f"poi_evaluate -ref {raw_folder / 'poisTs'} -pred {predictions}")
    summary = evaluate_folders(raw_folder / "poisTs", predictions)
    print(format_table(summary))
    print(f"\nmodel:       {trainer.output_folder}")
    print(f"predictions: {predictions}")
    print(f"evaluation:  {predictions / 'evaluation'} (summary.json, points.csv, plots)")
    return summary


def _stepper():
    start = time.perf_counter()

    def step(command: str) -> None:
        print(f"\n[{time.perf_counter() - start:6.0f} s] $ {command}", flush=True)

    return step


if __name__ == "__main__":
    sys.exit(main())
