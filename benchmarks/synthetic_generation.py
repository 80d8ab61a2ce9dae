"""How long the synthetic phantoms take: whole datasets through write_*_dataset, in seconds per case.

The time per case includes generating, compressing and writing the files and
the writer's validation of the finished dataset, i.e. what `poi_demo` and
`poi_convert synthetic-*` cost a user. Generation alone (make_*_case, no
files) is timed separately so a slowdown can be placed.

    python benchmarks/synthetic_generation.py [--spine-cases 20] [--xray-cases 100] [--keep DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from dataset_conversion.synthetic_common import case_seed
from dataset_conversion.synthetic_spine import make_spine_case, write_spine_dataset
from dataset_conversion.synthetic_xray import make_xray_case, write_xray_dataset


def _per_case(run: Callable[[], object], cases: int) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / cases


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spine-cases", type=int, default=20, help="3D cases at the default size (default 20)")
    parser.add_argument("--xray-cases", type=int, default=100, help="2D cases at the default size (default 100)")
    parser.add_argument("--keep", type=Path, default=None, help="write the datasets here and keep them")
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="poi_synthetic_bench_"))
    try:
        make_spine_case("warm_up", 0)  # imports and first-call costs are not per-case costs
        make_xray_case("warm_up", 0)
        rows = []
        n3, n2 = args.spine_cases, args.xray_cases
        rows.append(("3D spine, generate only", n3, _per_case(
            lambda: [make_spine_case("c", case_seed(0, i)) for i in range(n3)], n3)))
        rows.append(("3D spine, write_spine_dataset", n3, _per_case(
            lambda: write_spine_dataset(root / "Dataset501_SyntheticSpine", num_cases=n3, overwrite=True), n3)))
        rows.append(("2D X-ray, generate only", n2, _per_case(
            lambda: [make_xray_case("c", case_seed(0, i)) for i in range(n2)], n2)))
        rows.append(("2D X-ray, write_xray_dataset", n2, _per_case(
            lambda: write_xray_dataset(root / "Dataset502_SyntheticXray", num_cases=n2, overwrite=True), n2)))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'what':34s} {'cases':>5s} {'s/case':>8s}")
    for what, cases, seconds in rows:
        print(f"{what:34s} {cases:5d} {seconds:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
