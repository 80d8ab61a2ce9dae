"""Heatmap targets and their inverse: rendering, sub-voxel decoding, soft-argmax.

Every coordinate here is a continuous voxel coordinate of the tensor being
rendered or decoded, in numpy axis order ``([z,] y, x)``, with voxel centres
on integers (the "array" convention of :mod:`poi_nnunet.geometry`, applied to
a patch). Everything is batched over ``(B, C)`` and works in 2D and 3D.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

SigmaLike = Union[float, Sequence[float], Tensor]


# ----------------------------------------------------------------------------- rendering
def _axis_grids(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> List[Tensor]:
    return [torch.arange(n, dtype=dtype, device=device) for n in shape]


def render_gaussian_heatmaps(
    points: Tensor,
    valid: Tensor,
    shape: Sequence[int],
    sigma_voxels: SigmaLike,
    amplitude: float = 1.0,
) -> Tensor:
    """Render ``amplitude * exp(-sum_d (x_d - p_d)^2 / (2 sigma_d^2))`` per channel.

    ``points`` is ``(B, C, D)``, ``valid`` ``(B, C)`` bool; ``sigma_voxels`` is a
    scalar, a per-axis ``(D,)`` sequence, or a tensor broadcastable to ``(B, C, D)``
    (per-channel widths). The Gaussian is separable, so it is built as an outer
    product of D one-dimensional profiles: cost is one multiply per output voxel,
    which keeps hundreds of channels cheap. Nothing is truncated, so a point just
    outside the patch still leaves its tail inside it. Invalid channels are all
    zero (their coordinates may be NaN); the loss masks them anyway.
    """
    dim = len(shape)
    if points.ndim != 3 or points.shape[-1] != dim:
        raise ValueError(f"points must be (B, C, {dim}) for a {dim}D shape, got {tuple(points.shape)}")
    if valid.shape != points.shape[:2]:
        raise ValueError(f"valid must be {tuple(points.shape[:2])}, got {tuple(valid.shape)}")
    dtype = points.dtype if points.is_floating_point() else torch.float32
    sigma = torch.as_tensor(sigma_voxels, dtype=dtype, device=points.device)
    sigma = torch.broadcast_to(sigma, points.shape)
    if bool((sigma <= 0).any()):
        raise ValueError("sigma_voxels must be positive")
    # Invalid points may carry NaN; park them at 0 so no NaN reaches the product.
    centre = torch.where(valid[..., None], points.to(dtype), torch.zeros((), dtype=dtype, device=points.device))
    out: Optional[Tensor] = None
    for d, grid in enumerate(_axis_grids(shape, dtype, points.device)):
        profile = torch.exp(-0.5 * ((grid - centre[..., d : d + 1]) / sigma[..., d : d + 1]) ** 2)  # (B, C, n_d)
        profile = profile.reshape(*profile.shape[:2], *([1] * d), shape[d], *([1] * (dim - d - 1)))
        out = profile if out is None else out * profile
    assert out is not None
    scale = valid.to(dtype) * amplitude
    return out * scale.reshape(*scale.shape, *([1] * dim))


# ----------------------------------------------------------------------------- decoding
def _window_offsets(radius: int, dim: int, device: torch.device) -> Tensor:
    """All integer offsets of a (2r+1)^D block, shape (K, D)."""
    g = torch.arange(-radius, radius + 1, device=device)
    return torch.stack(torch.meshgrid(*([g] * dim), indexing="ij"), -1).reshape(-1, dim)


def _gather_windows(
    flat: Tensor, peak: Tensor, shape: Sequence[int], radius: int, rows: Optional[Tensor] = None,
    others: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Values around each peak as float64 ``(N, K)``, their positions ``(N, K, D)`` and
    which of them lie inside the volume (a window at the border is masked, not shifted,
    so the fit stays centred on the true peak). Peak ``n`` lies in map ``flat[n]``, or in
    ``flat[rows[n]]`` where ``rows`` is given (several peaks per map). ``others`` ``(N, Q, D)``
    (NaN rows ignored): other peaks of the same map; voxels nearer to one of them than to the
    peak are masked too, so a neighbouring peak's flank does not pull the fit."""
    dim = len(shape)
    size = torch.tensor(list(shape), device=flat.device)
    pos = peak[:, None, :] + _window_offsets(radius, dim, flat.device)[None]
    inside = ((pos >= 0) & (pos < size)).all(-1)
    if others is not None and others.shape[1]:
        own = ((pos - peak[:, None, :]) ** 2).sum(-1).to(torch.float64)
        other = ((pos[:, :, None, :].to(torch.float64) - others[:, None].to(torch.float64)) ** 2).sum(-1)
        inside &= own <= other.nan_to_num(float("inf")).amin(-1)
    clamped = torch.minimum(pos.clamp_min(0), size - 1)
    strides = torch.tensor([int(torch.tensor(shape[d + 1 :]).prod()) for d in range(dim)], device=flat.device)
    index = (clamped * strides).sum(-1)
    values = flat.gather(1, index) if rows is None else flat[rows[:, None], index]
    return values.to(torch.float64), pos.to(torch.float64), inside


def _gaussian_model(theta: Tensor, background: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``background + a exp(-1/2 sum_d q_d (x_d - mu_d)^2)``, theta = (a, mu_1..D, log q_1..D).

    Log precision keeps the width positive and makes its steps relative."""
    dim = pos.shape[-1]
    mu, q = theta[:, 1 : 1 + dim], theta[:, 1 + dim :].exp()
    r = pos - mu[:, None]
    e = torch.exp(-0.5 * (q[:, None] * r * r).sum(-1))
    return background[:, None] + theta[:, :1] * e, e, r


def _fit_gaussians(
    values: Tensor, pos: Tensor, inside: Tensor, background: Tensor, theta: Tensor, iterations: int
) -> Tensor:
    """Levenberg-Marquardt least-squares fit of an axis-aligned Gaussian on a known
    background to each window, from the start ``theta`` (see :func:`_gaussian_model`).

    Steps are clipped (centre by 1 voxel, precision by a factor 2) and refused if the
    centre would leave the window: from a start at the argmax a free step can jump
    into the wide, shallow local minimum of a half-seen peak at the border. Batched
    with a fixed iteration count: no data-dependent control flow, so it runs alike
    on CPU and GPU."""
    dim = pos.shape[-1]
    radius = int(round(pos.shape[1] ** (1.0 / dim))) // 2
    anchor = pos.mean(1)  # the argmax: window positions are symmetric offsets around it
    w = inside.to(values.dtype)
    damping = torch.full(values.shape[:1], 1e-3, dtype=values.dtype, device=values.device)
    limit = torch.cat([torch.full((1,), float("inf")), torch.ones(dim), torch.full((dim,), 0.7)]).to(values)

    def cost(th: Tensor) -> Tensor:
        return ((values - _gaussian_model(th, background, pos)[0]) ** 2 * w).sum(1)

    current = cost(theta)
    for _ in range(iterations):
        model, e, r = _gaussian_model(theta, background, pos)
        ae = (theta[:, :1] * e)[..., None]
        q = theta[:, None, 1 + dim :].exp()
        jac = torch.cat([e[..., None], ae * q * r, -0.5 * ae * q * r * r], -1)
        jw = jac * w[..., None]
        hess = jw.transpose(1, 2) @ jac
        grad = (jw * (values - model)[..., None]).sum(1)
        diag = torch.diagonal(hess, dim1=1, dim2=2)
        system = hess + torch.diag_embed(damping[:, None] * diag + 1e-12)
        step = torch.linalg.solve_ex(system, grad[..., None])[0][..., 0]  # a singular window is rejected below
        proposal = theta + torch.maximum(torch.minimum(step, limit), -limit)
        proposal[:, 1 + dim :] = proposal[:, 1 + dim :].clamp(-7.0, 2.5)  # sigma in [0.3, 33] voxels
        new_cost = cost(proposal)
        stays = ((proposal[:, 1 : 1 + dim] - anchor).abs() <= radius).all(1)
        better = torch.isfinite(new_cost) & (new_cost < current) & stays
        theta = torch.where(better[:, None], proposal, theta)
        current = torch.where(better, new_cost, current)
        damping = torch.where(better, damping * 0.3, damping * 10.0).clamp(1e-9, 1e9)
    return theta


def _local_centroid(values: Tensor, pos: Tensor, inside: Tensor, background: Tensor, peak: Tensor) -> Tensor:
    """Background-subtracted centre of mass of the window: the fallback where a fit
    fails. Always inside the window and never NaN; a flat map gives its argmax."""
    mass = (values - background[:, None]).clamp_min(0) * inside
    total = mass.sum(1, keepdim=True)
    centre = (mass[..., None] * pos).sum(1) / total.clamp_min(torch.finfo(values.dtype).tiny)
    return torch.where(total > 0, centre, peak.to(values.dtype))


def _start(values: Tensor, inside: Tensor, background: Tensor, peak: Tensor, radius: int) -> Tensor:
    """Initial theta from the argmax and its two neighbours per axis: a parabola through
    their logs (background subtracted) gives width and offset. Axes where that fails
    (a neighbour outside the volume, or no peak shape) borrow the mean width of the
    axes where it worked, else sigma = radius / 2, and start at the argmax."""
    dim = peak.shape[-1]
    side = 2 * radius + 1
    centre = (side**dim - 1) // 2
    log = (values - background[:, None]).clamp_min(1e-30).log()
    q = torch.zeros(peak.shape, dtype=values.dtype, device=values.device)
    mu = peak.to(values.dtype).clone()
    good = torch.zeros(peak.shape, dtype=torch.bool, device=values.device)
    for d in range(dim):
        stride = side ** (dim - 1 - d)
        lo, mid, hi = log[:, centre - stride], log[:, centre], log[:, centre + stride]
        curv = lo - 2 * mid + hi
        good[:, d] = inside[:, centre - stride] & inside[:, centre + stride] & (curv < -0.01) & (curv > -5.0)
        q[:, d] = torch.where(good[:, d], -curv, q[:, d])
        mu[:, d] = torch.where(good[:, d], mu[:, d] + ((lo - hi) / (2 * curv)).clamp(-0.5, 0.5), mu[:, d])
    count = good.sum(1, keepdim=True)
    borrowed = torch.where(count > 0, q.sum(1, keepdim=True) / count.clamp_min(1), 4.0 / radius**2)
    q = torch.where(good, q, borrowed)
    height = values[:, centre] - background
    return torch.cat([height[:, None], mu, q.log()], 1)


def _first_fit(
    flat: Tensor, peak: Tensor, shape: Sequence[int], background: Tensor, iterations: int,
    rows: Optional[Tensor] = None, others: Optional[Tensor] = None,
) -> Tensor:
    """The radius-2 fit the automatic window starts from (theta, see :func:`_gaussian_model`)."""
    values, pos, inside = _gather_windows(flat, peak, shape, 2, rows, others)
    return _fit_gaussians(values, pos, inside, background, _start(values, inside, background, peak, 2), iterations)


def _auto_radius(
    flat: Tensor, peak: Tensor, shape: Sequence[int], background: Tensor, iterations: int
) -> Tuple[int, Tensor]:
    """Window radius ``ceil(2 sigma)`` from a radius-2 fit, with sigma the median over
    channels with a clear peak (height at least half the largest), so empty channels
    do not vote; also returns that first fit to start the second from."""
    dim = len(shape)
    theta = _first_fit(flat, peak, shape, background, iterations)
    sigma = (-0.5 * theta[:, 1 + dim :]).exp()
    clear = torch.isfinite(sigma).all(1) & (theta[:, 0] >= 0.5 * theta[:, 0].nan_to_num(0.0).max())
    typical = float(sigma[clear].median()) if bool(clear.any()) else 1.0
    return int(min(max(math.ceil(2 * typical), 2), 8)), theta


def _fit_at(
    flat: Tensor, peak: Tensor, shape: Sequence[int], background: Tensor, radius: int, iterations: int,
    first: Optional[Tensor], rows: Optional[Tensor] = None, others: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Sub-voxel centre ``(N, D)`` and height ``(N,)`` (float64) of the peak at each integer ``peak``:
    the window fit, started from ``first`` where that is usable, with the centre-of-mass fallback."""
    dim = len(shape)
    values, pos, inside = _gather_windows(flat, peak, shape, radius, rows, others)
    start = _start(values, inside, background, peak, radius)
    if first is not None:  # the first pass's centre and width are closer than the argmax start
        usable = torch.isfinite(first).all(1) & (first[:, 0] > 0)
        start = torch.where(usable[:, None], first, start)
    theta = _fit_gaussians(values, pos, inside, background, start, iterations)
    height, centre = theta[:, 0], theta[:, 1 : 1 + dim]
    ok = torch.isfinite(theta).all(1) & (height > 0) & ((centre - peak).abs() <= radius).all(1)
    coords = torch.where(ok[:, None], centre, _local_centroid(values, pos, inside, background, peak))
    return coords, torch.where(ok, height, start[:, 0])


class PeakFit(NamedTuple):
    """What :func:`fit_heatmap_peaks` found: per channel ``(B, C)``, the argmax's sub-voxel fit and how
    it was made (so that other peaks of the same maps can be fitted alike with :func:`fit_peaks_at`)."""

    coords: Tensor  # (B, C, D), the input's float dtype (at least float32)
    confidence: Tensor  # (B, C), height / amplitude clipped to [0, 1], same dtype
    height: Tensor  # (B, C) float64, fitted height above the background (not clipped)
    peak: Tensor  # (B, C, D) long, the integer argmax
    background: Tensor  # (B, C) float64, the channel's median
    radius: int  # the window radius used


def fit_heatmap_peaks(
    heatmaps: Tensor, window: Optional[int] = None, *, amplitude: float = 1.0, iterations: int = 6
) -> PeakFit:
    """:func:`decode_heatmaps` with the details of the fit (see :class:`PeakFit`)."""
    if heatmaps.ndim not in (4, 5):
        raise ValueError(f"heatmaps must be (B, C, y, x) or (B, C, z, y, x), got {tuple(heatmaps.shape)}")
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of voxels, got {window}")
    b, c, *shape = heatmaps.shape
    dim = len(shape)
    out_dtype = torch.promote_types(heatmaps.dtype, torch.float32)
    with torch.no_grad():
        flat = heatmaps.detach().reshape(b * c, -1)
        peak = torch.stack(torch.unravel_index(flat.argmax(1), tuple(shape)), -1)
        background = flat.median(1).values.to(torch.float64)
        first: Optional[Tensor] = None
        if window is None:
            radius, first = _auto_radius(flat, peak, shape, background, iterations)
        else:
            radius = max(int(window) // 2, 1)
        coords, height = _fit_at(flat, peak, shape, background, radius, iterations, first)
        confidence = (height / amplitude).clamp(0.0, 1.0)
    return PeakFit(coords.reshape(b, c, dim).to(out_dtype), confidence.reshape(b, c).to(out_dtype),
                   height.reshape(b, c), peak.reshape(b, c, dim), background.reshape(b, c), radius)


def decode_heatmaps(
    heatmaps: Tensor, window: Optional[int] = None, *, amplitude: float = 1.0, iterations: int = 6
) -> Tuple[Tensor, Tensor]:
    """Sub-voxel peak of each channel: ``(coords (B, C, D), confidence (B, C))``.

    Integer argmax first, then a least-squares fit of ``a * Gaussian(mu, sigma_d)``
    on a background level to the ``window``-sided block around it (Levenberg-
    Marquardt in float64). Why a full fit: under additive noise least squares is
    the maximum-likelihood estimate, and it reaches the Cramer-Rao floor (see
    ``benchmarks/decoding_precision.py``). Cheaper options lose there: a 3-point
    log-parabola uses 3 voxels per axis and the log amplifies flank noise; a
    windowed centre of mass sums the noise of every voxel and is biased by a
    window clipped at the border (at 5 % noise in 3D, sigma 2: mean error 0.40
    voxel against 0.044 here, 0.63 for the integer argmax). Out-of-volume voxels
    are masked, so a window clipped at the border stays centred on the true
    peak, and a centre outside the volume (a point just off the patch) is found
    from its tail.

    The background is the median of the whole channel, not a fit parameter: it
    is a property of the map, and fitted per window it trades off against height
    and width, which at the border (one flank missing) lets the centre run away
    by voxels. This assumes the peak covers well under half of the map.

    ``window`` is the block side in voxels (radius ``window // 2``); about
    ``4 * sigma + 1`` is best. ``None`` picks it from the data: a first fit with
    radius 2 estimates sigma, and the radius becomes ``ceil(2 * median sigma)``
    over the channels with a clear peak (height at least half the largest),
    clamped to [2, 8]. Where a fit fails (non-finite, non-positive height, or
    the centre leaving the window) the background-subtracted centre of mass of
    the block is used instead, so the result is sub-voxel unless the map is flat.

    Confidence rule: fitted peak height above the background divided by
    ``amplitude`` (the amplitude the targets were rendered with), clipped to
    [0, 1]. A missing landmark gives a low value whatever the output's offset.
    """
    fit = fit_heatmap_peaks(heatmaps, window, amplitude=amplitude, iterations=iterations)
    return fit.coords, fit.confidence


def fit_peaks_at(
    heatmaps: Tensor, rows: Tensor, peaks: Tensor, background: Tensor, radius: int, *, auto_start: bool = True,
    others: Optional[Tensor] = None, iterations: int = 6,
) -> Tuple[Tensor, Tensor]:
    """Sub-voxel fits of given integer peaks, made as :func:`decode_heatmaps` fits the argmax.

    ``heatmaps`` ``(N, *spatial)``; peak ``p`` is voxel ``peaks[p]`` (``(P, D)`` integers) of map
    ``rows[p]`` (``(P,)``), so a map can have several. ``background`` ``(N,)`` and ``radius`` are
    those a :class:`PeakFit` of the same maps reports; ``auto_start``: start from a radius-2 fit,
    as the automatic window (``window=None``) does. ``others`` ``(P, Q, D)``: other peaks of the
    same map (NaN where none); window voxels nearer to one of them than to the peak are left out
    of its fit. Returns float64 centres ``(P, D)`` and heights above the background ``(P,)``;
    without ``others``, a peak at its map's argmax gets the fit :func:`fit_heatmap_peaks` made
    (same maps, same radius).
    """
    shape = tuple(heatmaps.shape[1:])
    if peaks.ndim != 2 or peaks.shape[1] != len(shape) or rows.shape != peaks.shape[:1]:
        raise ValueError(f"peaks must be (P, {len(shape)}) with one row index each, got {tuple(peaks.shape)}, "
                         f"{tuple(rows.shape)}")
    with torch.no_grad():
        flat = heatmaps.detach().reshape(heatmaps.shape[0], -1)
        rows = rows.to(device=flat.device, dtype=torch.long)
        peak = peaks.to(device=flat.device, dtype=torch.long)
        bg = background.to(device=flat.device, dtype=torch.float64)[rows]
        if others is not None:
            others = others.to(device=flat.device, dtype=torch.float64)
        first = _first_fit(flat, peak, shape, bg, iterations, rows, others) if auto_start else None
        return _fit_at(flat, peak, shape, bg, radius, iterations, first, rows, others)


def rough_peak_centres(heatmaps: Tensor, rows: Tensor, peaks: Tensor, background: Tensor) -> Tensor:
    """Cheap sub-voxel centres ``(P, D)`` (float64) of integer ``peaks`` (arguments as :func:`fit_peaks_at`):
    per axis, the vertex of a parabola through the logs of the peak and its two neighbours (background
    subtracted), at most half a voxel from the peak; the peak itself along an axis where that fails.
    What the fit starts from: good to a few tenths of a voxel, for telling peaks apart, not for points."""
    shape = tuple(heatmaps.shape[1:])
    with torch.no_grad():
        flat = heatmaps.detach().reshape(heatmaps.shape[0], -1)
        rows = rows.to(device=flat.device, dtype=torch.long)
        peak = peaks.to(device=flat.device, dtype=torch.long)
        bg = background.to(device=flat.device, dtype=torch.float64)[rows]
        values, _, inside = _gather_windows(flat, peak, shape, 1, rows)
        return _start(values, inside, bg, peak, 1)[:, 1 : 1 + len(shape)]


# ----------------------------------------------------------------------------- differentiable
def _per_channel(value: Union[float, Tensor], like: Tensor, dim: int) -> Union[float, Tensor]:
    """A scalar, ``(C,)`` or ``(B, C)`` value shaped to broadcast over ``(B, C, *spatial)``."""
    if not isinstance(value, Tensor) or value.ndim == 0:
        return value
    return value.to(like).reshape(*value.shape, *([1] * dim))


def spatial_softmax(logits: Tensor, beta: Union[float, Tensor] = 1.0) -> Tensor:
    """Softmax of ``beta * logits`` over all spatial voxels of each channel.

    ``beta`` (scalar, ``(C,)`` or ``(B, C)``, may be learnable) is the inverse
    temperature: larger values concentrate the mass on the peak. Stable for any
    logit range (``torch.softmax`` subtracts the maximum)."""
    b, c, *spatial = logits.shape
    scaled = logits * _per_channel(beta, logits, len(spatial))
    return torch.softmax(scaled.reshape(b, c, -1), dim=-1).reshape(logits.shape)


def expected_coordinates(probs: Tensor) -> Tensor:
    """``E[x]`` per channel under a spatial distribution, ``(B, C, D)``.

    Computed from the D marginals (sum over the other axes, then a dot with the
    voxel indices), which is cheaper than a dense coordinate grid."""
    dim = probs.ndim - 2
    coords = []
    for d in range(dim):
        other = tuple(2 + k for k in range(dim) if k != d)
        marginal = probs.sum(dim=other) if other else probs
        grid = torch.arange(probs.shape[2 + d], dtype=probs.dtype, device=probs.device)
        coords.append((marginal * grid).sum(-1))
    return torch.stack(coords, -1)


def soft_argmax(logits: Tensor, beta: Union[float, Tensor] = 1.0) -> Tensor:
    """Differentiable peak position ``(B, C, D)``: expected voxel coordinate under
    :func:`spatial_softmax`. The coarse stage trains through this; use
    :func:`decode_heatmaps` for the final, most precise answer at inference."""
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got {tuple(logits.shape)}")
    return expected_coordinates(spatial_softmax(logits, beta))


def pooled_features(features: Tensor, weights: Tensor) -> Tensor:
    """Heatmap-weighted average of a feature map per channel: ``(B, C, F)``.

    ``weights`` ``(B, C, *spatial)`` must be non-negative (e.g. the output of
    :func:`spatial_softmax`); they are normalised to sum to one per channel, so
    raw heatmaps of any amplitude pool the same way, and an all-zero channel
    pools to zero features instead of NaN."""
    if features.shape[0] != weights.shape[0] or features.shape[2:] != weights.shape[2:]:
        raise ValueError(
            f"features {tuple(features.shape)} and weights {tuple(weights.shape)} need the same batch and spatial size"
        )
    w = weights.flatten(2)
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return torch.einsum("bcn,bfn->bcf", w, features.flatten(2).to(w.dtype))
