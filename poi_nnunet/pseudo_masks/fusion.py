"""Fusing the predictions of the three per-plane 2D models into one pseudo label map (seed 002, section 3.1.3).

Seed 002 trains one point-supervised 2D model per anatomical plane (transverse, coronal, sagittal) and
combines their masks into a pseudo mask "of higher quality than the results of the individual models";
the paper does not say how. Two ways are offered here:

* ``"mean"`` (:func:`fuse_probabilities`): average the softmax probabilities of the models, then argmax.
  A model that is confidently right can outvote two that are weakly wrong.
* ``"vote"`` (:func:`fuse_votes`): each model votes with its own argmax label, the majority wins. One
  confidently wrong model cannot drag the result, but confidence is only used to break ties.

Every input must already lie on the case's grid (the orchestration resamples each plane's prediction back
to it; nnU-Net does so itself when it writes ``--save_probabilities``, see
:func:`load_nnunet_probabilities`). Arrays are in numpy axis order, ``(C, *spatial)`` for probabilities and
``(*spatial)`` for label maps. Inconsistent arrays raise ``ValueError`` (a programming error here; the
caller, which knows the file names, reports user mistakes as :class:`~poi_nnunet.errors.PoiNnunetError`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence, Tuple, get_args

import numpy as np

from ..errors import PoiNnunetError

FusionMethod = Literal["mean", "vote"]
FUSION_METHODS: Tuple[str, ...] = get_args(FusionMethod)

#: Key under which nnU-Net v2 (``export_prediction_from_logits``) stores the probabilities in ``<case>.npz``.
NNUNET_PROBABILITIES_KEY = "probabilities"
# Softmax channels sum to 1 (float32 rounding is ~1e-6); the slack also admits probabilities stored as float16.
_SUM_TOLERANCE = 1e-2


def label_dtype(num_classes: int) -> np.dtype:
    """Smallest unsigned dtype holding labels ``0 .. num_classes - 1`` (uint8 up to 256 classes, as nnU-Net)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def fuse_probabilities(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Label map ``(*spatial)`` of the class with the highest mean probability over the models.

    ``probabilities``: one ``(C, *spatial)`` array per model, all of the same shape. The mean is taken in
    float64 so that the result does not depend on the order of the models. Where two classes have exactly
    the same mean the lower class index wins (``np.argmax`` keeps the first maximum), the same rule as
    :func:`fuse_votes` without probabilities. Returns uint8 (uint16 beyond 256 classes).
    """
    stack = _check_probabilities(probabilities)
    total = np.zeros(stack[0].shape, dtype=np.float64)
    for p in stack:
        total += p
    # argmax of the sum equals argmax of the mean; dividing would only add rounding
    return np.argmax(total, axis=0).astype(label_dtype(total.shape[0]))


def fuse_votes(label_maps: Sequence[np.ndarray], num_classes: int,
               probabilities: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Label map ``(*spatial)`` of the class most models voted for.

    ``label_maps``: one ``(*spatial)`` integer label map per model, values in ``0 .. num_classes - 1``.
    ``probabilities``: optionally the ``(C, *spatial)`` arrays the maps came from, one per model in the same
    order (``C == num_classes``); they are used only to break ties.

    Tie rule (e.g. the 1-1-1 split of three models, or 1-1 of two): among the classes with the most votes,

    1. when ``probabilities`` are given, the class with the highest probability summed over all models wins
       (so a tie goes to the class the models, taken together, were surest of);
    2. otherwise, or if those sums are equal too, the lowest class index wins. With background as 0 this
       makes any tie that involves background background, i.e. a voxel the models cannot agree on is left
       out of the pseudo mask rather than given to one of the contenders; a tie between two foreground labels
       goes to the lower one.

    The result does not depend on the order of the models. Returns uint8 (uint16 beyond 256 classes).
    """
    maps = [np.asarray(m) for m in label_maps]
    if not maps:
        raise ValueError("fuse_votes needs at least one label map")
    dtype = label_dtype(num_classes)
    shape = maps[0].shape
    for i, m in enumerate(maps):
        if m.shape != shape:
            raise ValueError(f"label map {i} has shape {m.shape}, label map 0 has {shape}")
        if m.dtype.kind not in "iub":
            raise ValueError(f"label map {i} has dtype {m.dtype}; integer labels expected")
        if m.size and (int(m.min()) < 0 or int(m.max()) >= num_classes):
            raise ValueError(f"label map {i} holds values outside 0..{num_classes - 1}")
    probs = None
    if probabilities is not None:
        probs = _check_probabilities(probabilities)
        if len(probs) != len(maps):
            raise ValueError(f"{len(probs)} probability arrays for {len(maps)} label maps")
        if probs[0].shape != (num_classes, *shape):
            raise ValueError(f"probabilities have shape {probs[0].shape}, expected {(num_classes, *shape)}")

    # One pass per class keeps memory at a few volumes, whatever the number of classes. Classes are visited in
    # ascending order and only a strictly better (count, score) replaces the best so far, which is the tie rule.
    best_label = np.zeros(shape, dtype=dtype)
    best_count = np.full(shape, -1, dtype=np.int32)
    best_score = np.zeros(shape, dtype=np.float64)
    for c in range(num_classes):
        count = np.zeros(shape, dtype=np.int32)
        for m in maps:
            count += m == c
        score = np.zeros(shape, dtype=np.float64)
        if probs is not None:
            for p in probs:
                score += p[c]
        better = (count > best_count) | ((count == best_count) & (score > best_score))
        best_label[better] = c
        best_count[better] = count[better]
        best_score[better] = score[better]
    return best_label


def fuse(probabilities: Sequence[np.ndarray], method: FusionMethod = "mean") -> np.ndarray:
    """Fuse the ``(C, *spatial)`` probabilities of several models into one ``(*spatial)`` label map.

    ``"mean"``: :func:`fuse_probabilities`. ``"vote"``: each model's argmax (lowest class on an exact tie),
    then :func:`fuse_votes` with the probabilities breaking ties.
    """
    if method == "mean":
        return fuse_probabilities(probabilities)
    if method == "vote":
        stack = _check_probabilities(probabilities)
        num_classes = stack[0].shape[0]
        dtype = label_dtype(num_classes)
        maps = [np.argmax(p, axis=0).astype(dtype) for p in stack]
        return fuse_votes(maps, num_classes, probabilities=stack)
    raise ValueError(f"unknown fusion method {method!r}; choose one of {', '.join(FUSION_METHODS)}")


def load_nnunet_probabilities(path: Path) -> np.ndarray:
    """The ``(C, *spatial)`` float32 softmax probabilities nnU-Net v2 wrote for one case.

    What nnU-Net writes (checked in ``nnunetv2/inference/export_prediction.py``, v2.8.1): with
    ``--save_probabilities``, ``export_prediction_from_logits`` calls
    ``np.savez_compressed(<case>.npz, probabilities=...)`` and pickles the case's properties to ``<case>.pkl``.
    The array is built in ``convert_predicted_logits_to_segmentation_with_correct_shape``: the logits are
    resampled from the preprocessed spacing back to the cropped original shape, softmaxed in float32
    (``LabelManager.apply_inference_nonlin``), put back into the uncropped image
    (``revert_cropping_on_probabilities``: outside the nonzero crop box, background has probability 1) and
    transposed with ``transpose_backward``. It therefore lies on the grid of the segmentation written beside
    it, in the array order of the image reader: for ``SimpleITKIO`` that of ``sitk.GetArrayFromImage``, i.e.
    ``(C, z, y, x)``, and ``(C, 1, y, x)`` for a 2D image (nnU-Net reads 2D images as one slice; only the
    segmentation file drops that axis). Caveats: with ``SimpleITKIOWithReorient`` the probabilities stay in
    the reoriented (RAS) array order while the segmentation file is turned back; with region-based training
    the channels are sigmoids of regions, which do not sum to 1 and cannot be fused by argmax; this is refused.

    Raises :class:`PoiNnunetError` naming ``path`` when it is missing, unreadable, lacks the
    ``probabilities`` key, or holds something that is not ``(C, *spatial)`` probabilities.
    """
    path = Path(path)
    if not path.is_file():
        raise PoiNnunetError(f"{path}: no such file (nnU-Net writes <case>.npz only when run with "
                             f"--save_probabilities)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise PoiNnunetError(f"{path}: a bare .npy array, not an nnU-Net .npz archive")
        with loaded as npz:
            keys = list(npz.files)
            if NNUNET_PROBABILITIES_KEY not in keys:
                raise PoiNnunetError(f"{path}: no '{NNUNET_PROBABILITIES_KEY}' array (found: "
                                     f"{', '.join(keys) or 'none'}); not written by nnU-Net v2 --save_probabilities?")
            array = npz[NNUNET_PROBABILITIES_KEY]
    except PoiNnunetError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError, EOFError ...
        raise PoiNnunetError(f"{path}: cannot be read as an .npz archive ({type(exc).__name__}: {exc})") from exc
    if array.dtype.kind != "f":
        raise PoiNnunetError(f"{path}: '{NNUNET_PROBABILITIES_KEY}' has dtype {array.dtype}, expected floats")
    if array.ndim < 3 or array.shape[0] < 1:
        raise PoiNnunetError(f"{path}: '{NNUNET_PROBABILITIES_KEY}' has shape {array.shape}, expected "
                             f"(C, *spatial) with at least two spatial axes")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise PoiNnunetError(f"{path}: '{NNUNET_PROBABILITIES_KEY}' holds NaN or infinite values")
    sums = array.sum(axis=0, dtype=np.float64)
    if array.size and (float(array.min()) < -_SUM_TOLERANCE or np.abs(sums - 1.0).max() > _SUM_TOLERANCE):
        raise PoiNnunetError(f"{path}: the {array.shape[0]} channels are not probabilities summing to 1 per "
                             f"voxel (region-based model, or logits?)")
    return array


def _check_probabilities(probabilities: Sequence[np.ndarray]) -> Tuple[np.ndarray, ...]:
    """The arrays, checked to be ``(C, *spatial)`` floats of one shape."""
    stack = tuple(np.asarray(p) for p in probabilities)
    if not stack:
        raise ValueError("fusion needs at least one probability array")
    shape = stack[0].shape
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"probabilities must be (C, *spatial), got shape {shape}")
    for i, p in enumerate(stack):
        if p.shape != shape:
            raise ValueError(f"probabilities {i} have shape {p.shape}, probabilities 0 have {shape}")
        if p.dtype.kind != "f":
            raise ValueError(f"probabilities {i} have dtype {p.dtype}; floats expected")
    return stack
