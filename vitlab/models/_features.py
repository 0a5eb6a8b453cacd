"""timm's feature API, written once for every vitlab network: ``forward_intermediates``,
``prune_intermediate_layers`` and ``feature_info``.

A network is a stem, a sequence of *taps* (the outputs ``forward_intermediates`` can return: a ViT's
blocks, OutGrid's stem and stages) and a final norm. A family mixes in :class:`FeatureTaps` (through
:class:`~vitlab.models._contract.ClassifierContract`) and says what differs:

* :meth:`_feature_taps`: a generator of the taps' outputs for an image batch, tokens ``(B, N, C)``
  (``num_prefix_tokens`` of them first) or maps ``(B, C, H, W)``;
* :attr:`feature_info`: one ``dict(num_chs=, reduction=, module=)`` per tap, in order, and
  :meth:`_keep_taps`, which drops the modules after the first ``n`` taps: both default to a token
  model whose taps are its blocks;
* :attr:`norm_fits_every_tap`: whether the final norm applies to any tap (a ViT's LayerNorm) or was
  made for the last one only (OutGrid's BatchNorm, sized for the last stage's channels).

The semantics are timm's (``timm/models/vision_transformer.py`` for token models, ``maxxvit.py`` for
stage maps): ``indices`` picks taps as timm's ``feature_take_indices`` reads it (``None`` all, an
int the last n, a sequence absolute or negative indices); ``norm`` puts the final norm on the taps it
fits; ``stop_early`` runs no further than the last tap asked for; ``output_fmt`` ``NCHW`` gives maps
(a token model's patch tokens laid out on their grid, the prefix tokens left out) and ``NLC`` gives
tokens (a map's pixels in raster order); the final features are ``forward_features``' unless the run
stopped early.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from timm.models._features import feature_take_indices
from torch import nn

__all__ = ["FeatureTaps", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = ("NCHW", "NLC")

#: ``forward_intermediates``' taps: tensors, or ``(patch tokens, prefix tokens)`` pairs.
Taps = list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]


class FeatureTaps:
    #: Whether the final norm applies to every tap (tokens) or only to the last one (stage maps).
    norm_fits_every_tap: bool = True
    num_prefix_tokens: int = 0

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One ``dict(num_chs=, reduction=, module=)`` per tap: its width, its stride over the input
        image, the module whose output it is. By default a token model's: one tap per block of
        ``self.blocks``, ``embed_dim`` wide, ``patch_size`` pixels per token."""
        return [dict(num_chs=self.embed_dim, reduction=self.patch_size, module=f"blocks.{i}")
                for i in range(len(self.blocks))]

    def _feature_taps(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """The output of every tap in order, for images ``x``."""
        raise NotImplementedError

    def _keep_taps(self, n: int) -> None:
        """Drop the modules that run after tap ``n - 1`` (by default the blocks after the first ``n``)."""
        self.blocks = self.blocks[:n]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Taps | tuple[torch.Tensor, Taps]:
        """``(final features, taps)``, or the taps alone with ``intermediates_only`` (timm's semantics,
        see the module docstring)."""
        return self._intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)

    def _intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None,
        norm: bool,
        stop_early: bool,
        output_fmt: str,
        intermediates_only: bool,
        return_prefix_tokens: bool = False,
    ) -> Taps | tuple[torch.Tensor, Taps]:
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {', '.join(OUTPUT_FORMATS)}, got {output_fmt!r}")
        last_tap = len(self.feature_info) - 1
        take, max_index = feature_take_indices(last_tap + 1, indices)
        taps, index, out = [], -1, x
        for index, out in enumerate(self._feature_taps(x)):
            if index in take:
                taps.append(self._normed(out, index) if norm else out)
            if stop_early and index == max_index:
                break
        image_size = (x.shape[-2], x.shape[-1])
        taps = [self._formatted(t, output_fmt, image_size, return_prefix_tokens) for t in taps]
        if intermediates_only:
            return taps
        return self._normed(out, index) if self.norm_fits_every_tap or index == last_tap else out, taps

    def _normed(self, tap: torch.Tensor, index: int) -> torch.Tensor:
        """The final norm on tap ``index`` where it fits that tap, else the tap as it is."""
        fits = self.norm_fits_every_tap or index == len(self.feature_info) - 1
        return self.norm(tap) if fits else tap

    def _formatted(
        self, tap: torch.Tensor, output_fmt: str, image_size: tuple[int, int], with_prefix: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if tap.ndim == 4:  # a stage map (B, C, H, W)
            return tap if output_fmt == "NCHW" else tap.flatten(2).transpose(1, 2)
        prefix, patches = tap[:, : self.num_prefix_tokens], tap[:, self.num_prefix_tokens :]
        if output_fmt == "NCHW":
            grid = (image_size[0] // self.patch_size, image_size[1] // self.patch_size)
            patches = patches.reshape(tap.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
        return (patches, prefix) if with_prefix and self.num_prefix_tokens else patches

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the modules after the last tap ``indices`` picks (timm's semantics): the final norm
        with ``prune_norm`` (or, where it fits the last tap only, when that tap is dropped), the head
        with ``prune_head`` (or when the features the head read are gone: ``num_classes=0`` and
        ``global_pool=''``, so ``forward`` gives the last kept tap's features). ``feature_info`` then
        lists the kept taps; returns the absolute indices picked."""
        info = self.feature_info
        take, max_index = feature_take_indices(len(info), indices)
        drops_last = max_index < len(info) - 1
        self._keep_taps(max_index + 1)
        if prune_norm or (drops_last and not self.norm_fits_every_tap):
            self.norm = nn.Identity()
        if drops_last:
            self.num_features = info[max_index]["num_chs"]
        if prune_head or (drops_last and not self.norm_fits_every_tap):
            self.reset_classifier(0, "")
        return take
