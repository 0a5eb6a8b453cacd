"""Pluggable position encodings for the ViT backbone: absolute tables, CPVT's conditional encoding, and
the user's own.

A position encoding is one class, a subclass of :class:`ViTPosition`. The backbone builds it once as
``cls(dim=, grid=, depth=, **options)``, where ``options`` are the rest of the ``model.net.position``
node; ``_target_`` names the class: a name registered here with :func:`register_position`
(``learned``, ``sincos``, ``none``) or the dotted path of a class in the user's own package
(``mypkg.pos.MyPosition``). As for the attention layers (:mod:`vitlab.layers.vit_attention`), the
class's constructor is its typed config (:func:`position_config`) and checks its own arguments.

The backbone calls these hooks, each with a default in :class:`ViTPosition`:

* :meth:`~ViTPosition.embed` on the patch tokens ``(B, H*W, dim)`` (raster order) before the CLS
  tokens join them and the blocks run: an absolute table is added here;
* :meth:`~ViTPosition.after_block` on the whole token sequence after each block listed in
  :attr:`~ViTPosition.after_blocks`: CPVT's PEG runs here;
* :meth:`~ViTPosition.init_weights` (B0's init, after the CLS token's), :meth:`~ViTPosition.no_weight_decay`
  (names relative to the module) and :meth:`~ViTPosition.layer_groups` (the submodules that belong
  with a block for layer-wise LR decay; the rest of the module is in the stem's group);
* :attr:`~ViTPosition.table_grid`, the grid a fixed-size table is made for (``None``: any grid), and
  :meth:`~ViTPosition.resample`, which makes the table for another grid.

The options every position encoding takes (so that ``model.net.position._target_=...`` works on any
ViT's node) are those of :class:`ViTPosition`: ``table_drop``, ``token_drop`` and the ``cpe*`` options
of the conditional encoding, which combines with any table.

The built-ins: ``learned``, a learned table ``(1, H*W, dim)`` added to the patch tokens (B0's, drawn
from N(0, 0.02^2)); ``sincos``, the fixed 2D sin-cos table (:func:`~vitlab.layers.pos_embed.sincos_2d`,
no parameters); ``none``, nothing added (the positions come from RoPE or ALiBi in the attention, or
from the PEG alone).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitlab.layers.cpe import PEG
from vitlab.layers.dropout import dropout
from vitlab.layers.plugins import PluginKind
from vitlab.layers.pos_embed import sincos_2d

__all__ = [
    "POSITIONS",
    "LearnedPosition",
    "SinCosPosition",
    "ViTPosition",
    "build_position",
    "position_class",
    "position_config",
    "register_position",
]


class ViTPosition(nn.Module):
    """No table (``none``), and the hooks and options every position encoding shares.

    Args (the options of ``model.net.position``):
        table_drop: element-wise dropout (inverted scaling) on a learned table before it is added, an
            independent mask per image; CLS unaffected (clear-vit's V1). Only for a class that drops
            its table (:attr:`drops_table`).
        token_drop: dropout on the input tokens (CLS and patches, after :meth:`embed`); ``None`` = the
            backbone's ``drop_rate`` (B0).
        cpe: CPVT's conditional encoding: a PEG (depthwise ``cpe_kernel_size`` conv, residual on the
            patches) after block ``cpe_after`` (0 = after the first block, as CPVT); ``cpe_zero_init``
            starts it as the identity.

    The backbone passes ``dim`` (the width), ``grid`` (the patch grid of ``img_size``) and ``depth``
    (the number of blocks).
    """

    #: The grid the table is made for; ``None``: the encoding takes any grid.
    table_grid: tuple[int, int] | None = None
    #: Whether the class applies ``table_drop`` (to a learned table).
    drops_table = False

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        depth: int,
        table_drop: float = 0.0,
        token_drop: float | None = None,
        cpe: bool = False,
        cpe_after: int = 0,
        cpe_kernel_size: int = 3,
        cpe_zero_init: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= table_drop < 1.0:
            raise ValueError(f"position.table_drop: must be in [0, 1), got {table_drop}")
        if table_drop > 0 and not self.drops_table:
            raise ValueError(f"position.table_drop: needs the learned table (position._target_: learned), "
                             f"{type(self).__name__} has none to drop")
        if token_drop is not None and not 0.0 <= token_drop < 1.0:
            raise ValueError(f"position.token_drop: must be null (the backbone's drop_rate) or in [0, 1), got {token_drop}")
        if cpe and not 0 <= cpe_after < depth:
            raise ValueError(f"position.cpe_after: {cpe_after} must index a block (0 .. {depth - 1})")
        if cpe and (cpe_kernel_size < 1 or cpe_kernel_size % 2 != 1):
            raise ValueError(f"position.cpe_kernel_size: must be odd and positive, got {cpe_kernel_size}")
        self.dim = dim
        self.table_drop = table_drop
        self.token_drop = token_drop
        self.cpe_after = cpe_after
        #: The blocks after which the backbone calls :meth:`after_block`.
        self.after_blocks: tuple[int, ...] = (cpe_after,) if cpe else ()
        self.peg = PEG(dim, cpe_kernel_size, zero_init=cpe_zero_init) if cpe else None

    def embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The patch tokens ``(B, grid_h * grid_w, dim)`` with their positions, before the CLS tokens
        join them."""
        return x

    def after_block(self, index: int, x: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
        """The tokens ``(B, num_prefix + patches, dim)`` after block ``index`` (one of
        :attr:`after_blocks`): the PEG's output."""
        return self.peg(x, grid, num_prefix)

    @torch.no_grad()
    def init_weights(self) -> None:
        """B0's init of the encoding, called by the backbone after the CLS token's. The PEG keeps
        PyTorch's default init (or zeros, ``cpe_zero_init``)."""

    def no_weight_decay(self) -> set[str]:
        """The module's parameters that take no weight decay (names relative to the module)."""
        return set()

    def layer_groups(self) -> dict[str, int]:
        """Submodules that go with a block's group in layer-wise LR decay (name -> block index): the
        PEG with the block it follows. The module's other parameters are in the stem's group."""
        return {"peg": self.cpe_after} if self.peg is not None else {}

    def resample(self, grid: tuple[int, int]) -> None:
        """Make the table for another patch grid (fine-tuning at another image size); an encoding
        without a table follows any grid already."""

    def extra_repr(self) -> str:
        return f"table_grid={self.table_grid}, table_drop={self.table_drop}, after_blocks={self.after_blocks}"


#: What the backbone passes every position encoding; the rest of the position node are its options.
BACKBONE_ARGS = ("dim", "grid", "depth")
POSITIONS = PluginKind("position", "position encoding", BACKBONE_ARGS, "mypkg.pos.MyPosition", base=ViTPosition)


def register_position(name: str) -> Callable[[type[ViTPosition]], type[ViTPosition]]:
    """Class decorator: make ``name`` select the class in ``model.net.position._target_``."""
    return POSITIONS.register(name)


def position_class(target: str) -> type[ViTPosition]:
    """The class a ``_target_`` names: a registered name, or ``package.module.Class``."""
    return POSITIONS.resolve(target)


def position_config(spec: str | Mapping[str, Any] | Any = "learned", **options: Any) -> Any:
    """The typed config of a position encoding: a frozen dataclass with ``_target_`` and every option
    of the class (its defaults, then ``options``); an unknown option is one error line with the
    nearest name."""
    return POSITIONS.config(spec, **options)


def build_position(config: Any, **backbone: Any) -> ViTPosition:
    """The position encoding of a config of :func:`position_config`, given ``dim``, ``grid``, ``depth``."""
    return POSITIONS.build(config, **backbone)


register_position("none")(ViTPosition)


@register_position("learned")
class LearnedPosition(ViTPosition):
    """A learned table ``(1, grid_h * grid_w, dim)`` added to the patch tokens (B0's), with optional
    ``table_drop``. It starts at zero; B0's init (:meth:`init_weights`) draws it from N(0, 0.02^2)."""

    drops_table = True

    def __init__(self, dim: int, grid: tuple[int, int], depth: int, **kwargs: Any) -> None:
        super().__init__(dim, grid, depth, **kwargs)
        self.table_grid = tuple(grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))

    def embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        table = self.pos_embed
        if self.table_drop > 0 and self.training:
            # An independent mask per image. Functional, not a module: torch's module tracker (flop
            # counter) cannot hook a parameter's view made under no_grad.
            table = dropout(table.expand(x.shape[0], -1, -1), self.table_drop)
        return x + table

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.pos_embed, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} | super().no_weight_decay()

    @torch.no_grad()
    def resample(self, grid: tuple[int, int]) -> None:
        """The table interpolated (bicubic, as timm's ``resample_abs_pos_embed``) to ``grid``: a new
        parameter, so call it before the optimizer is built."""
        grid = (int(grid[0]), int(grid[1]))
        if grid != self.table_grid:
            table = resample_abs_pos_embed(self.pos_embed.detach(), new_size=list(grid), old_size=list(self.table_grid),
                                           num_prefix_tokens=0)
            self.pos_embed = nn.Parameter(table.contiguous())
            self.table_grid = grid


@register_position("sincos")
class SinCosPosition(ViTPosition):
    """The fixed 2D sin-cos table of the grid (:func:`~vitlab.layers.pos_embed.sincos_2d`) added to the
    patch tokens. Derived from the config, so checkpoints do not carry it (a non-persistent buffer)."""

    def __init__(self, dim: int, grid: tuple[int, int], depth: int, **kwargs: Any) -> None:
        if dim % 4:
            raise ValueError(f"position._target_: embed_dim {dim} must be divisible by 4 for the 2D sin-cos table")
        super().__init__(dim, grid, depth, **kwargs)
        self.table_grid = tuple(grid)
        self.register_buffer("pos_embed", sincos_2d(*grid, dim)[None], persistent=False)

    def embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x + self.pos_embed

    def resample(self, grid: tuple[int, int]) -> None:
        """The table of ``grid``, computed anew."""
        self.table_grid = (int(grid[0]), int(grid[1]))
        self.pos_embed = sincos_2d(*self.table_grid, self.dim)[None].to(self.pos_embed)
