"""docs/format.md, the unified raw format written for users, stays true.

* The example datasets, as make_example.py writes them (the repository keeps their json; images are
  generated, not tracked), pass the validator that ``poi_convert validate`` runs, and cover every part
  of the format.
* Every ```json block of format.md whose preceding line links an example file
  (``[...](format_example/<path>.json)``) equals that file; every other json
  block is valid JSON, and a points file among them passes the points syntax
  check. Every example json file is shown; every link resolves.
* The ```python blocks of format.md run (from docs/) against the examples.
* make_example.py writes exactly the committed json files, and an image for every channel of each case.
* Broken copies of the examples are rejected, naming the file and the point:
  one case per error the document promises.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.cli.convert import main as convert_main
from poi_nnunet.pois import parse_poi_json
from poi_nnunet.raw_format_checks import validate_raw_dataset

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOCUMENT = DOCS / "format.md"
EXAMPLES = DOCS / "format_example"
DATASETS = ("Dataset997_SparseLabels", "Dataset998_LandmarksOnly", "Dataset999_Example")
_FILE_LINK = re.compile(r"\]\((format_example/[^)\s]+\.json)\)")


def _code_blocks(language: str) -> List[Tuple[int, Optional[str], str]]:
    """(line number, linked example file or None, text) of each ```<language> block of format.md."""
    lines = DOCUMENT.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start = i
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            link = _FILE_LINK.search(previous)
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"format.md:{start + 1}: unterminated ```{language} block"
            blocks.append((start + 1, link.group(1) if link else None, "\n".join(body)))
        i += 1
    return blocks


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example datasets as ``make_example.py`` writes them, images included (the repository keeps only
    their json files: binary files are generated, not tracked), in ``<tmp>/format_example``."""
    sys.dont_write_bytecode, before = True, sys.dont_write_bytecode  # no __pycache__ left in docs/
    try:
        spec = importlib.util.spec_from_file_location("make_example", EXAMPLES / "make_example.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    root = tmp_path_factory.mktemp("docs") / "format_example"
    module.write_examples(root)
    return root


def _problems(path: Path) -> List[str]:
    return [str(p) for p in validate_raw_dataset(path, progress=False)]


# ---------------------------------------------------------------------------- the examples are valid
@pytest.mark.parametrize("name", DATASETS)
def test_example_dataset_is_valid(name: str, capsys: pytest.CaptureFixture, examples: Path) -> None:
    path = examples / name
    assert path.is_dir()
    assert _problems(path) == []
    assert convert_main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_examples_cover_the_format(examples: Path) -> None:
    """What format.md says the examples show, they show."""
    assert sorted(p.name for p in examples.iterdir() if p.is_dir() and p.name.startswith("Dataset")) == list(DATASETS)
    metas = {n: json.loads((examples / n / "dataset.json").read_text()) for n in DATASETS}
    used_keys = set().union(*metas.values())
    for key in ("channel_names", "labels", "numTraining", "file_ending",
                "pois", "poi_mirror_pairs", "structure_mirror_pairs", "poi_source"):
        assert key in used_keys, key

    full = examples / "Dataset999_Example"
    for folder in ("imagesTr", "labelsTr", "poisTr", "imagesTs", "labelsTs", "poisTs"):
        assert (full / folder).is_dir(), folder
    assert "noNorm" in metas["Dataset999_Example"]["channel_names"].values()
    missing_point = json.loads((full / "poisTr" / "spine_002.json").read_text())["points"]
    assert (2, 3) not in {(p["structure"], p["poi"]) for p in missing_point}

    landmarks = examples / "Dataset998_LandmarksOnly"
    assert not (landmarks / "labelsTr").exists()
    assert metas["Dataset998_LandmarksOnly"]["labels"] == {"background": 0}
    points = json.loads((landmarks / "poisTr" / "hand_001.json").read_text())["points"]
    assert points and all(p["structure"] == 0 and len(p["position"]) == 2 for p in points)
    assert sitk.ReadImage(str(landmarks / "imagesTr" / "hand_001_0000.nii.gz")).GetDimension() == 2

    sparse = examples / "Dataset997_SparseLabels"
    labels = metas["Dataset997_SparseLabels"]["labels"]
    assert labels["ignore"] == max(labels.values())
    values, counts = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(sparse / "labelsTr" / "abdomen_001.nii.gz"))),
                               return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 3, 1: 1, 2: 1, 3: 8 ** 3 - 5}


def test_example_files_stay_tiny() -> None:
    sizes = [p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(sizes) < 64 * 1024


# ---------------------------------------------------------------------------- the document shows them exactly
def test_json_blocks_equal_the_example_files() -> None:
    blocks = _code_blocks("json")
    shown = set()
    for line, linked, text in blocks:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            pytest.fail(f"format.md:{line}: json block is not valid JSON ({exc})")
        if linked is not None:
            path = DOCS / linked
            assert path.is_file(), f"format.md:{line}: {linked} does not exist"
            assert data == json.loads(path.read_text(encoding="utf-8")), f"format.md:{line}: differs from {linked}"
            shown.add(path.resolve())
        elif isinstance(data, dict) and "coordinate_system" in data:
            _, problems = parse_poi_json(data, f"format.md:{line}")
            assert problems == [], [str(p) for p in problems]
    example_json = {p.resolve() for p in EXAMPLES.rglob("*.json")}
    assert example_json, "no example json files"
    not_shown = sorted(str(p.relative_to(DOCS)) for p in example_json - shown)
    assert not_shown == [], f"example files format.md does not show: {not_shown}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_resolve() -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.MULTILINE)}
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    for target in targets:
        if target.startswith("#"):
            assert target[1:] in anchors, f"format.md links to a missing heading {target}"
        elif not re.match(r"^[a-z]+://", target):
            assert (DOCS / target).exists(), f"format.md links to a missing file {target}"


def test_python_blocks_run(monkeypatch: pytest.MonkeyPatch, examples: Path) -> None:
    """The page's snippets, run where the page sits (paths relative to docs/), against the generated examples."""
    blocks = _code_blocks("python")
    assert blocks
    monkeypatch.chdir(examples.parent)
    for line, _, code in blocks:
        exec(compile(code, f"{DOCUMENT}:{line}", "exec"), {"__name__": "format_md"})


# ---------------------------------------------------------------------------- the generator writes what is committed
def test_make_example_writes_the_committed_json_and_the_images_it_describes(examples: Path) -> None:
    """The repository keeps the examples' json (what the page shows); the script writes exactly those files
    plus the images, one per channel of each case in dataset.json."""
    def json_files(root: Path) -> List[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.json")
                      if p.parts[len(root.parts)].startswith("Dataset"))

    assert json_files(examples) == json_files(EXAMPLES)
    for rel in json_files(EXAMPLES):
        assert (examples / rel).read_text() == (EXAMPLES / rel).read_text(), rel
    for name in DATASETS:
        channels = json.loads((EXAMPLES / name / "dataset.json").read_text())["channel_names"]
        for points in (EXAMPLES / name).glob("pois*/*.json"):
            split = points.parent.name[len("pois"):]
            for channel in channels:
                image = examples / name / f"images{split}" / f"{points.stem}_{int(channel):04d}.nii.gz"
                assert image.is_file(), image


# ---------------------------------------------------------------------------- broken examples are caught
def _edit_json(path: Path, edit: Callable[[Any], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # NaN stays NaN, as a careless writer would leave it


def _points(case: str, edit: Callable[[List[Dict[str, Any]]], None], split: str = "Tr"):
    return lambda ds: _edit_json(ds / f"pois{split}" / f"{case}.json", lambda d: edit(d["points"]))


def _meta(edit: Callable[[Dict[str, Any]], None]):
    return lambda ds: _edit_json(ds / "dataset.json", edit)


def _set(index: int, key: str, value: Any) -> Callable[[List[Dict[str, Any]]], None]:
    return lambda points: points[index].__setitem__(key, value)


def _remove_label_2(ds: Path) -> None:
    path = ds / "labelsTr" / "spine_001.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array[array == 2] = 0
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


SPINE, HAND, KIDNEYS = "Dataset999_Example", "Dataset998_LandmarksOnly", "Dataset997_SparseLabels"
S1, HAND_POIS = "poisTr/spine_001.json", "poisTr/hand_001.json"
BROKEN = {
    # name: (dataset, edit, file the problem names, words of the message, point it names)
    "pois missing": (SPINE, _meta(lambda m: m.pop("pois")), "dataset.json", "'pois' is required", None),
    "poi id not a positive integer": (SPINE, _meta(lambda m: m["pois"].__setitem__("0", "zero")), "dataset.json",
                                      "positive integers written as strings", None),
    "mirror pair names an unknown poi": (SPINE, _meta(lambda m: m.__setitem__("poi_mirror_pairs", [[2, 4]])),
                                         "dataset.json", "'poi_mirror_pairs' names 4", None),
    "mirror pair names an unknown label": (KIDNEYS, _meta(lambda m: m.__setitem__("structure_mirror_pairs", [[1, 5]])),
                                           "dataset.json", "'structure_mirror_pairs' names 5", None),
    "ignore not the highest label": (KIDNEYS, _meta(lambda m: m["labels"].update(right_kidney=3, ignore=2)),
                                     "dataset.json", "'ignore' label must have the highest", None),
    "landmark-only dataset declares a label": (HAND, _meta(lambda m: m["labels"].__setitem__("hand", 1)),
                                               "labelsTr", "landmark-only", None),
    "poi id not in pois": (SPINE, _points("spine_001", _set(0, "poi", 9)), S1,
                           "poi id 9 is not in dataset.json 'pois'", "structure 1, poi 9"),
    "structure not a label": (SPINE, _points("spine_001", _set(0, "structure", 7)), S1,
                              "structure 7 is not a label", "structure 7, poi 1"),
    "structure absent from the dense mask": (SPINE, _remove_label_2, S1,
                                             "structure 2 does not occur in this case's segmentation",
                                             "structure 2, poi 1"),
    "point outside the image": (SPINE, _points("spine_001", _set(0, "position", [0.0, -1.5, 200.0])), S1,
                                "lies outside the image", "structure 1, poi 1"),
    "point outside a held-out image": (SPINE, _points("spine_003", _set(1, "position", [40.0, 2.25, 110.0]), "Ts"),
                                       "poisTs/spine_003.json", "lies outside the image", "structure 1, poi 2"),
    "duplicate pair": (SPINE, _points("spine_001", lambda p: p.append(dict(p[0]))), S1,
                       "duplicate (structure, poi) pair", "structure 1, poi 1"),
    "NaN coordinate": (SPINE, _points("spine_001", _set(2, "position", [float("nan"), 1.5, 111.0])), S1,
                       "non-finite coordinate", "structure 1, poi 3"),
    "placeholder instead of an absent point": (SPINE, _points("spine_002", lambda p: p.append(
        {"structure": 2, "poi": 3, "position": None})), "poisTr/spine_002.json", "'position' must be a list",
        "structure 2, poi 3"),
    "2 coordinates in 3D": (SPINE, _points("spine_001", _set(0, "position", [0.0, -1.5])), S1,
                            "2 coordinates for a 3D image", "structure 1, poi 1"),
    "3 coordinates in 2D": (HAND, _points("hand_001", _set(1, "position", [2.0, 3.25, 0.0])), HAND_POIS,
                            "3 coordinates for a 2D image", "structure 0, poi 2"),
    "RAS instead of LPS": (SPINE, lambda ds: _edit_json(ds / S1, lambda d: d.__setitem__("coordinate_system", "RAS")),
                           S1, "'coordinate_system' must be \"LPS\"", None),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_validator_catches_a_broken_example(name: str, tmp_path: Path, examples: Path) -> None:
    dataset, edit, file, words, point = BROKEN[name]
    copy = shutil.copytree(examples / dataset, tmp_path / dataset)
    edit(copy)
    problems = validate_raw_dataset(copy, progress=False)
    hits = [p for p in problems if words in p.message]
    assert hits, f"{name}: expected a problem with {words!r}, got {[str(p) for p in problems]}"
    assert any(Path(p.file) == copy / file for p in hits), [str(p) for p in hits]
    if point is not None:
        assert any(p.point and point in p.point for p in hits), [str(p) for p in hits]


def test_the_image_extent_ends_half_a_voxel_past_the_edge_centres(tmp_path: Path, examples: Path) -> None:
    """format.md: voxel i spans i - 0.5 .. i + 0.5; a point on that border is inside, beyond it is not."""
    copy = shutil.copytree(examples / SPINE, tmp_path / SPINE)
    image = sitk.ReadImage(str(copy / "imagesTr" / "spine_001_0000.nii.gz"))
    for index, valid in (((-0.5, 2.5, 5.5), True), ((7.5, 2.5, 5.5), True), ((-0.6, 2.5, 5.5), False),
                         ((3.5, 2.5, 7.6), False)):
        position = list(image.TransformContinuousIndexToPhysicalPoint(index))
        _edit_json(copy / S1, lambda d: d["points"][0].__setitem__("position", position))
        assert (_problems(copy) == []) is valid, (index, _problems(copy))
