"""Coarse-to-fine POI heads (seed 000): soft-argmax coarse points, patch refinement with self-attention.

:class:`CoarseRefineNetwork` wraps the plans' nnU-Net network (built by the
trainer with one heatmap logit channel per POI channel after the segmentation
channels) and adds two heads:

* **Coarse stage.** The heatmap logits of the patch (at the configuration's
  spacing, the whole structure-centred crop in view) go through a spatial
  softmax with a learnable inverse temperature; the expected coordinate is the
  coarse point (:func:`~poi_nnunet.heatmaps.soft_argmax`, differentiable), and
  the last decoder stage's features pooled with the same weights are the POI's
  coarse feature vector (:func:`~poi_nnunet.heatmaps.pooled_features`).
* **Refinement stage.** Around each (detached) coarse point a full-resolution
  patch of ``refine_patch_size`` voxels of the input image *and* the last
  decoder features is sampled (:func:`extract_patches`, trilinear, zeros
  outside the volume) and embedded by a small CNN. Each POI becomes one token,
  the concatenation ``[patch embedding, coarse feature, Fourier encoding of the
  coarse position, POI-id embedding, structure embedding]`` projected to
  ``d_model``; a 2-layer transformer encoder attends across the POIs of the
  structure and a linear head regresses an offset in voxels. Refined point =
  coarse point (detached) + offset: the refinement loss trains the residual and
  the backbone's features, while the coarse point is trained by its own loss
  (the cascade keeps the two stages' responsibilities apart, as iterative
  refinement in detection transformers does).

**Many POIs.** The refinement stage costs one patch (sampled, embedded by the
CNN) and one attention token per refined POI, so in training it refines a
random subset of ``refine_subset`` channels per sample
(:meth:`CoarseRefineNetwork.refine_channels`), batched as ``(B, K)``: the
channels the caller marks as preferred (the coordinate loss's valid targets)
first, the rest drawn at random to fill the K slots. In eval mode (validation,
inference) every channel is refined. The coarse stage stays on every channel:
its spatial softmax is of the size of the heatmap logits the heatmap loss
already holds, and the coarse loss scores every valid target; only the pooling
of coarse features is restricted to the refined channels.

``forward(x)`` is exactly the nnU-Net network's forward (a tensor, or a list
under deep supervision), so nnU-Net's sliding window, deep-supervision
switch (:attr:`decoder`) and checkpoints work unchanged. ``forward(x,
structure)`` also computes the points and returns a :class:`PointPrediction`
(the trainer calls it so, through DDP or a compiled module alike);
:meth:`forward_points` is the same for callers that hold the bare module.

Coordinates are continuous voxel indices of the network input (array order,
voxel centres on integers), as in :mod:`poi_nnunet.heatmaps`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .heatmaps import expected_coordinates, pooled_features, spatial_softmax

D_MODEL = 96
HEADS = 4
LAYERS = 2
FOURIER_FREQUENCIES = 4
ID_EMBEDDING = 16
INITIAL_BETA = 1.0


@dataclass
class PointPrediction:
    """What :meth:`CoarseRefineNetwork.forward_points` returns; coordinates ``(B, C, D)`` in input voxels."""

    output: Union[Tensor, List[Tensor]]  # the nnU-Net network's output (seg + heatmap channels)
    heatmaps: Tensor  # (B, C, *spatial) heatmap logits, float32
    coarse: Tensor  # soft-argmax points, every channel
    centres: Tensor  # (B, K, D) where the refinement patches were taken (coarse, detached, jittered in training)
    refined: Tensor  # (B, K, D) centres + offset
    features: Tensor  # (B, K, F) coarse features of the refined channels
    # (B, K) long: the channel of each refined point (K = refine_subset, in training only); None: every channel
    # in order (K = C), as in eval mode
    refined_channels: Optional[Tensor] = None

    def refined_index(self) -> Tensor:
        """``(B, K)`` channel of each refined point (``arange(C)`` per sample where every channel was refined)."""
        if self.refined_channels is not None:
            return self.refined_channels
        b, c = self.refined.shape[:2]
        return torch.arange(c, device=self.refined.device).expand(b, c)


def extract_patches(volume: Tensor, centres: Tensor, size: Sequence[int]) -> Tensor:
    """Patches of ``size`` voxels centred on continuous voxel positions: ``(B, N, F, *size)``.

    ``volume`` is ``(B, F, *spatial)`` (2D or 3D), ``centres`` ``(B, N, D)`` in its array-order voxel
    coordinates. Patch voxel ``k`` along an axis lies at ``centre + k - (size - 1) / 2`` (the centre
    is the patch's geometric middle), sampled by linear interpolation; whatever lies outside the
    volume is zero, so a point at or beyond the border gives a zero-padded patch of the same shape.
    Differentiable with respect to ``volume`` (not the centres, which the caller detaches).
    """
    b, f, *spatial = volume.shape
    dim = len(spatial)
    if centres.ndim != 3 or centres.shape[0] != b or centres.shape[-1] != dim or len(size) != dim:
        raise ValueError(f"centres must be (B={b}, N, {dim}) and size {dim} values for a {dim}D volume, got "
                         f"{tuple(centres.shape)} and {tuple(size)}")
    n = centres.shape[1]
    dtype = volume.dtype if volume.is_floating_point() else torch.float32
    centres = torch.nan_to_num(centres.to(dtype), nan=-1e6)
    axes = [torch.arange(s, dtype=dtype, device=volume.device) - (s - 1) / 2 for s in size]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (*size, D)
    positions = centres.reshape(b, n, *([1] * dim), dim) + offsets  # (B, N, *size, D)
    extent = torch.tensor([max(s - 1, 1) for s in spatial], dtype=dtype, device=volume.device)
    grid = (2 * positions / extent - 1).flip(-1)  # grid_sample wants (x, y[, z]) in [-1, 1]
    grid = grid.reshape(b, n * size[0], *size[1:], dim)
    sampled = F.grid_sample(volume.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled.reshape(b, f, n, *size).movedim(2, 1)


def fourier_encoding(normalised: Tensor, frequencies: int = FOURIER_FREQUENCIES) -> Tensor:
    """``[p, sin(2^k pi p), cos(2^k pi p)]`` of positions in ``[-1, 1]``: ``(..., D * (1 + 2K))``."""
    scales = (2.0 ** torch.arange(frequencies, dtype=normalised.dtype, device=normalised.device)) * math.pi
    angles = normalised[..., None] * scales  # (..., D, K)
    return torch.cat([normalised, angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)


class PatchEmbedding(nn.Module):
    """Small CNN: two stride-2 stages, then a 2^D average-pooled grid flattened (keeps where in the
    patch things are, which an offset needs) and projected to ``d_model``."""

    def __init__(self, in_channels: int, dim: int, d_model: int, width: int = 32):
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
        pool = nn.AdaptiveAvgPool3d if dim == 3 else nn.AdaptiveAvgPool2d
        self.body = nn.Sequential(
            conv(in_channels, width, 3, padding=1), norm(width, affine=True), nn.LeakyReLU(0.01, inplace=True),
            conv(width, width, 3, stride=2, padding=1), norm(width, affine=True), nn.LeakyReLU(0.01, inplace=True),
            conv(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.01, inplace=True),
            pool(2),
        )
        self.project = nn.Linear(2 * width * 2 ** dim, d_model)

    def forward(self, patches: Tensor) -> Tensor:
        return self.project(self.body(patches).flatten(1))


class RefinementHead(nn.Module):
    """Tokens per POI -> transformer encoder across POIs -> offset in voxels (see the module docstring)."""

    def __init__(self, num_channels: int, num_structures: int, patch_channels: int, feature_channels: int,
                 refine_patch_size: Sequence[int], d_model: int = D_MODEL, heads: int = HEADS,
                 layers: int = LAYERS):
        super().__init__()
        dim = len(refine_patch_size)
        self.dim = dim
        self.refine_patch_size = [int(s) for s in refine_patch_size]
        self.num_structures = int(num_structures)
        self.embed = PatchEmbedding(patch_channels, dim, d_model)
        self.poi_embedding = nn.Embedding(num_channels, ID_EMBEDDING)
        self.structure_embedding = nn.Embedding(self.num_structures + 1, ID_EMBEDDING)  # last = unknown
        token = d_model + feature_channels + dim * (1 + 2 * FOURIER_FREQUENCIES) + 2 * ID_EMBEDDING
        self.token = nn.Sequential(nn.Linear(token, d_model), nn.LayerNorm(d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.offset = nn.Linear(d_model, dim)
        nn.init.zeros_(self.offset.weight)  # start as the identity: refined = coarse
        nn.init.zeros_(self.offset.bias)

    def forward(self, patch_source: Tensor, centres: Tensor, features: Tensor, structure: Tensor,
                channels: Optional[Tensor] = None) -> Tensor:
        """Offsets ``(B, K, D)`` for patches of ``patch_source`` ``(B, F, *spatial)`` around ``centres``
        ``(B, K, D)``, the points of POI channels ``channels`` ``(B, K)`` (None: every channel in order)."""
        b, c, d = centres.shape
        patches = extract_patches(patch_source, centres, self.refine_patch_size)
        embedded = self.embed(patches.flatten(0, 1)).reshape(b, c, -1)
        spatial = torch.tensor(patch_source.shape[2:], dtype=centres.dtype, device=centres.device)
        position = fourier_encoding(2 * centres / (spatial - 1).clamp_min(1) - 1)
        ids = self.poi_embedding.weight[None].expand(b, -1, -1) if channels is None else self.poi_embedding(channels)
        index = torch.where((structure >= 0) & (structure < self.num_structures), structure,
                            torch.full_like(structure, self.num_structures))
        struct = self.structure_embedding(index)[:, None].expand(-1, c, -1)
        tokens = self.token(torch.cat([embedded, features.to(embedded.dtype), position.to(embedded.dtype),
                                       ids.to(embedded.dtype), struct.to(embedded.dtype)], -1))
        return self.offset(self.transformer(tokens)).to(centres.dtype)


class CoarseRefineNetwork(nn.Module):
    """The plans' network (``backbone``, outputs ``num_segmentation + C``) plus the coarse and refinement heads."""

    def __init__(self, backbone: nn.Module, num_segmentation_outputs: int, num_channels: int, num_structures: int,
                 num_input_channels: int, refine_patch_size: Sequence[int], refine_on_features: bool = True,
                 d_model: int = D_MODEL, refine_jitter_voxels: float = 0.0, refine_subset: int = 0):
        super().__init__()
        self.backbone = backbone
        self.num_segmentation_outputs = int(num_segmentation_outputs)
        self.num_channels = int(num_channels)
        self.refine_on_features = bool(refine_on_features)
        feature_channels = _output_channels(self._feature_stage())
        self.log_beta = nn.Parameter(torch.tensor(math.log(INITIAL_BETA)))
        patch_channels = num_input_channels + (feature_channels if refine_on_features else 0)
        self.refiner = RefinementHead(num_channels, num_structures, patch_channels, feature_channels,
                                      refine_patch_size, d_model=d_model)
        self.refine_jitter_voxels = float(refine_jitter_voxels)  # std of the noise on patch centres while training
        self.refine_subset = int(refine_subset)  # channels refined per sample while training (0: all)
        self._features: Optional[Tensor] = None
        self._feature_stage().register_forward_hook(self._keep_features)

    # ------------------------------------------------------------------ nnU-Net compatibility
    @property
    def decoder(self) -> nn.Module:
        """nnU-Net's trainer toggles ``network.decoder.deep_supervision``."""
        return self.backbone.decoder

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.encoder

    def _feature_stage(self) -> nn.Module:
        return self.backbone.decoder.stages[-1]

    def _keep_features(self, module: nn.Module, inputs, output: Tensor) -> None:
        self._features = output

    def forward(self, x: Tensor, structure: Optional[Tensor] = None, refine_preferred: Optional[Tensor] = None):
        """The backbone's output; with ``structure`` ``(B,)`` (centre layer indices) the :class:`PointPrediction`
        (``refine_preferred``: see :meth:`forward_points`)."""
        if structure is None:
            return self.backbone(x)
        return self.forward_points(x, structure, refine_preferred)

    # ------------------------------------------------------------------ points
    @property
    def beta(self) -> Tensor:
        return self.log_beta.exp()

    def refine_channels(self, batch: int, preferred: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
        """The ``(B, K)`` channels to refine (ascending per sample), or None for every channel: in training with
        ``0 < refine_subset < C``, per sample the channels of ``preferred`` ``(B, C)`` bool first (a random
        ``K`` of them where there are more), the remaining slots a random draw of the others; K is fixed, so
        the step's cost does not depend on how many targets a sample has."""
        k, c = self.refine_subset, self.num_channels
        if not self.training or k <= 0 or k >= c:
            return None
        score = torch.rand(batch, c, device=device)  # in [0, 1): a random order within each group
        if preferred is not None:
            if tuple(preferred.shape) != (batch, c):
                raise ValueError(f"refine_preferred must be (B={batch}, C={c}), got {tuple(preferred.shape)}")
            score = score + preferred.to(device=device, dtype=score.dtype)
        return score.topk(k, dim=1).indices.sort(dim=1).values

    def forward_points(self, x: Tensor, structure: Tensor,
                       refine_preferred: Optional[Tensor] = None) -> PointPrediction:
        """Network output, coarse and refined points for a batch of crops; ``structure`` ``(B,)`` is the
        centre structure's layer index (-1: unknown). In training, only :meth:`refine_channels` are refined
        (``refine_preferred`` ``(B, C)`` bool: the channels to pick first, e.g. those with a target)."""
        self._features = None
        output = self.backbone(x)
        features = self._features
        self._features = None
        if features is None:
            raise RuntimeError("the decoder's last stage did not run: cannot pool coarse features")
        full = output[0] if isinstance(output, (list, tuple)) else output
        heatmaps = full[:, self.num_segmentation_outputs:].float()
        probs = spatial_softmax(heatmaps, self.beta)
        coarse = expected_coordinates(probs)
        channels = self.refine_channels(x.shape[0], refine_preferred, x.device)
        chosen = coarse
        if channels is not None:
            rows = torch.arange(channels.shape[0], device=channels.device)[:, None]
            probs, chosen = probs[rows, channels], coarse[rows, channels]
        pooled = pooled_features(features.float(), probs)
        centres = chosen.detach()
        if self.training and self.refine_jitter_voxels > 0:
            centres = centres + self.refine_jitter_voxels * torch.randn_like(centres)
        source = torch.cat([x.float(), features.float()], 1) if self.refine_on_features else x.float()
        structure = torch.as_tensor(structure, device=x.device).long().reshape(-1)
        offset = self.refiner(source, centres, pooled, structure, channels)
        return PointPrediction(output, heatmaps, coarse, centres, centres + offset, pooled, channels)


def _output_channels(module: nn.Module) -> int:
    """Output channels of a decoder stage (the last convolution it holds)."""
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise ValueError(f"cannot find the output width of {type(module).__name__}")
    return int(convs[-1].out_channels)
