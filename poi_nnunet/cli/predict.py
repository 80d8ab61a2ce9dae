"""``poi_predict -i IN -o OUT -d DATASET -c CONFIG -tr TRAINER``: predict POIs (and segmentations) for new images.

IN holds images named as nnU-Net's ``imagesTs``: ``<case>_0000<file_ending>``,
one file per channel. For each case OUT gets ``<case>.json`` (unified POI
format, with confidences), ``<case>.mrk.json`` (3D Slicer markups) and, where
the model segments, ``<case><file_ending>``; each is written under a temporary
name and renamed. OUT also gets the model's ``dataset.json`` and ``plans.json``
(as nnU-Net's predictor leaves them), which ``poi_evaluate`` reads. Points not written
(below ``--min_confidence``, ambiguous, structure not segmented, outside the image) are
counted per case and in one line at the end, and listed in ``OUT/dropped_points.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..errors import PoiNnunetError
from .common import add_device_argument, reports_user_errors, resolve_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poi_predict",
        description="Predict points of interest (and segmentations) with a model trained by poi_train: nnU-Net's "
        "sliding-window prediction, averaged over folds and mirrored inputs, heatmap peaks decoded at sub-voxel "
        "precision and mapped to world millimetres.",
    )
    parser.add_argument("-i", required=True, metavar="IN", help="folder of images named <case>_0000<file_ending>")
    parser.add_argument("-o", required=True, metavar="OUT", help="output folder (created if missing)")
    parser.add_argument("-d", required=True, metavar="DATASET", help="dataset id (501) or name (Dataset501_Spine)")
    parser.add_argument("-c", required=True, metavar="CONFIG", help="configuration: 2d, 3d_fullres, 3d_lowres")
    parser.add_argument("-tr", required=True, metavar="TRAINER", help="trainer short name (heatmap) or class name")
    parser.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                        help="folds to ensemble (default: every fold with the checkpoint); 'all' for fold_all")
    parser.add_argument("-p", default="poiPlans", metavar="PLANS", help="plans identifier (default poiPlans)")
    parser.add_argument("-chk", default="checkpoint_final.pth", metavar="CHECKPOINT",
                        help="checkpoint file name in each fold folder (default checkpoint_final.pth)")
    add_device_argument(parser, "predict on")
    parser.add_argument("-step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size (nnU-Net's default 0.5)")
    parser.add_argument("--min_confidence", type=float, default=None, metavar="C",
                        help="leave out points whose confidence is below C (default 0.1); they count as not "
                        "found, and are counted at the end and listed in OUT/dropped_points.json. Confidence is "
                        "one [0, 1] scale for every trainer: about 1 for one clear peak as trained, about 0 for "
                        "no peak or a tie between two places; 0 writes every point found")
    parser.add_argument("--disable_tta", action="store_true",
                        help="no test-time mirroring (faster, slightly less accurate)")
    parser.add_argument("--labels", default=None, metavar="DIR",
                        help="instance label maps <case><file_ending> on the input images' grids (e.g. a raw "
                        "dataset's labelsTs): points are looked for in these structures instead of the model's "
                        "own segmentation (coarse_refine then skips its segmentation pass and writes these labels)")
    parser.add_argument("--add-points", "--add_points", dest="add_points", default=None, metavar="FILE",
                        help="uv models only: also find the points of FILE, a unified-format points file of one "
                        "training case named <case>.json, holding new POI ids (each with its structure); each is "
                        "mapped to template coordinates through that case and looked for in every input case, "
                        "without retraining (reads the case from $nnUNet_preprocessed)")
    parser.add_argument("--overwrite", action="store_true", help="predict cases whose outputs already exist")
    parser.add_argument("--no_pbar", action="store_true", help="hide the progress bar")
    return parser


def _folds(values: Optional[Sequence[str]]) -> Optional[List[Union[int, str]]]:
    if values is None:
        return None
    out: List[Union[int, str]] = []
    for v in values:
        if v == "all":
            out.append(v)
        elif v.isdigit():
            out.append(int(v))
        else:
            raise PoiNnunetError(f"-f: a fold is an integer or 'all', got {v!r}")
    return out


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    folds = _folds(args.f)
    if not 0 < args.step_size <= 1:
        raise PoiNnunetError(f"-step_size must be in (0, 1], got {args.step_size}")
    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise PoiNnunetError(f"--min_confidence must be in [0, 1], got {args.min_confidence}")
    if args.labels is not None and not Path(args.labels).is_dir():
        raise PoiNnunetError(f"--labels {args.labels}: no such folder")
    if args.add_points is not None and not Path(args.add_points).is_file():
        raise PoiNnunetError(f"--add-points {args.add_points}: no such file")
    from ..inference.inputs import check_dimensionality, list_input_cases
    from ..inference.model import predictor_for
    from ..trained_models import find_model
    from ..inference.run import predict_input_cases, provided_label_files
    from ..inference.writing import write_run_files

    from ..trained_models import find_long_scan_models

    long_scan = find_long_scan_models(args.d, args.c, args.tr, args.p)
    if long_scan is not None:
        return _predict_long_scans(args, long_scan, folds)
    model = find_model(args.d, args.c, args.tr, args.p)
    cases = list_input_cases(args.i, model.file_ending, model.num_input_channels)
    check_dimensionality(cases, args.c, model.configuration_axes, model.trained_on_2d_images)
    if args.labels is not None:
        provided_label_files(cases, args.labels, model.file_ending)  # every case has one, before anything is written
    options = {} if args.min_confidence is None else {"min_confidence": args.min_confidence}
    device = resolve_device(args.device)
    predictor = predictor_for(model, folds, args.chk, device, use_mirroring=not args.disable_tta,
                              tile_step_size=args.step_size, **options)
    print(f"model {model.path}, folds {predictor.folds}; {len(cases)} case(s) in {args.i}")
    if args.add_points is not None:
        from ..inference.added_points import add_points_to_predictor

        print(f"added {add_points_to_predictor(predictor, args.add_points)} point(s) from {args.add_points}")
    arguments = {"input": args.i, "model": str(model.path), "folds": predictor.folds, "checkpoint": args.chk,
                 "device": device, "tile_step_size": args.step_size, "use_mirroring": not args.disable_tta,
                 "min_confidence": predictor.min_confidence, "labels": args.labels, "add_points": args.add_points}
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    write_run_files(out, model.dataset_json, model.plans, arguments)
    done = predict_input_cases(predictor, cases, out, overwrite=args.overwrite, progress=not args.no_pbar,
                               labels_dir=args.labels)
    print(f"predicted {len(done)} case(s) into {out}")
    return 0


def _predict_long_scans(args: argparse.Namespace, long_scan, folds) -> int:
    """A long-scan dataset's coarse pass and field-of-view models (see the description of fields of view in
    poi_nnunet.inference.fields_of_view), one merged output per case."""
    from ..inference.fields_of_view import predict_long_scans
    from ..inference.inputs import check_dimensionality, list_input_cases
    from ..inference.writing import write_run_files
    from ..trained_models import load_long_scan_models

    for flag, value in (("--labels", args.labels), ("--add-points", args.add_points)):
        if value is not None:
            raise PoiNnunetError(f"{flag} is not supported for a model split into fields of view")
    coarse, fields = long_scan
    cases = list_input_cases(args.i, coarse.file_ending, coarse.num_input_channels)
    check_dimensionality(cases, args.c, coarse.configuration_axes, coarse.trained_on_2d_images)
    options = {} if args.min_confidence is None else {"min_confidence": args.min_confidence}
    device = resolve_device(args.device)
    models = load_long_scan_models(coarse, fields, folds, args.chk, device, use_mirroring=not args.disable_tta,
                                   tile_step_size=args.step_size, **options)
    print(f"coarse pass {coarse.path}; fields of view: "
          + ", ".join(f"{fov.name} ({model.path.name})" for fov, model in fields)
          + f"; folds {models.coarse.folds}; {len(cases)} case(s) in {args.i}")
    arguments = {"input": args.i, "coarse_model": str(coarse.path),
                 "field_of_view_models": {fov.name: str(model.path) for fov, model in fields},
                 "folds": models.coarse.folds, "checkpoint": args.chk, "device": device,
                 "tile_step_size": args.step_size, "use_mirroring": not args.disable_tta,
                 "min_confidence": models.min_confidence}
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    write_run_files(out, coarse.dataset_json, coarse.plans, arguments)
    done = predict_long_scans(models, cases, out, overwrite=args.overwrite, progress=not args.no_pbar)
    print(f"predicted {len(done)} case(s) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
