"""QAViT, the "Quad-Attention ViT": four attention branches fused per block, and a global token bank.

Re-implementation of github.com/cujoramirez/QA-ViT (the v1 model its README and scripts use) after
vitlab's spec ``docs/seeds/qavit.md``. A patch stem (conv + LayerNorm) and a learnable position table
feed ``depth`` pre-norm blocks; each block runs four branches on the normalised tokens,

* spatial window attention (:class:`~vitlab.layers.window_attention.WindowBankAttention`),
* multi-scale dilated attention (:class:`~vitlab.layers.dilated_attention.MultiScaleDilatedAttention`),
* token attention inside channel groups (:class:`~vitlab.layers.channel_group_attention.ChannelGroupTokenAttention`),
* cross-attention to the bank (:class:`~vitlab.layers.token_bank.BankCrossAttention`),

fuses them (per-branch LN + compression to ``dim / compress_ratio``, softmax-weighted concatenation),
passes the result through a bottleneck MLP ``dim -> dim / bottleneck_ratio -> dim`` into the residual,
then a feed-forward with a depthwise 3x3 conv. Mean pooling over the tokens and a linear head.

The first three branches read the bank as extra keys and write their outputs into it (see
:mod:`vitlab.layers.token_bank`). ``faithful=False`` (default) fixes the seed's defects: a
functional per-sample bank, masked and cropped window padding without the expanding window
Linformer, multi-scale pooling on each scale's own grid. ``faithful=True`` builds the
seed's model exactly (13,054,564 / 38,125,636 parameters for tiny / small at 100 classes) with its
in-place bank, for comparison only.

Named sizes: ``qavit_tiny`` (d 256, 4 heads, depth 12, bank 16) and ``qavit_small`` (d 384, 6 heads,
depth 16, bank 32) at 224 px / patch 16 (CIFAR upsampled, as the seed), and ``qavit_tiny_32`` /
``qavit_small_32`` on CIFAR's native 32 px (patch 4: an 8x8 grid, window 4, no Linformer).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.inference import fold_affine_into_linear
from vitlab.layers.attention_maps import AttentionMap
from vitlab.layers.channel_group_attention import ChannelGroupTokenAttention
from vitlab.layers.conv_ffn import DepthwiseConvFFN
from vitlab.layers.dilated_attention import MultiScaleDilatedAttention
from vitlab.layers.dropout import Dropout
from vitlab.layers.fusion import HybridFusion
from vitlab.layers.tracing import fx_leaf
from vitlab.layers.token_bank import BankCrossAttention, BankState, TokenBank
from vitlab.layers.window_attention import WindowBankAttention
from vitlab.models._contract import ClassifierContract
from vitlab.models._registry import build_from_config, config_dataclass, register_model
from vitlab.models.vit import default_patch_size

__all__ = ["BRANCHES", "QAViT", "QAViTConfig", "QuadAttentionBlock", "model_cfgs"]

#: The branches in the order a block runs them (the order matters for the bank).
BRANCHES = ("window", "dilated", "channel_group", "bank")


@fx_leaf
def check_grid(images: torch.Tensor, patch_size: int, grid: tuple[int, int], img_size: int) -> torch.Tensor:
    """``images``, once they are known to give the position table's ``grid`` at ``patch_size``. A
    ``torch.fx`` leaf: the check runs as one call of the traced network, not as branches in its graph."""
    H, W = images.shape[-2:]
    if (H // patch_size, W // patch_size) != tuple(grid) or H % patch_size or W % patch_size:
        raise ValueError(
            f"input {H}x{W} does not give the {grid[0]}x{grid[1]} grid of img_size {img_size} "
            f"at patch_size {patch_size}; set model.net.img_size (the position table is not interpolated)"
        )
    return images


torch.fx.wrap("check_grid")


class QuadAttentionBlock(nn.Module):
    """One QAViT block. The bank is passed in (one bank shared by all blocks) together with its
    current state; the block returns the new tokens and the new state."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        compress_ratio: int = 4,
        bottleneck_ratio: int = 2,
        mlp_ratio: float = 0.5,
        window_size: int = 7,
        dilations: Sequence[int] = (1, 2, 3),
        num_groups: int = 8,
        linformer_k: int | None = 64,
        faithful: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_flash: bool = False,
    ) -> None:
        super().__init__()
        common = dict(attn_drop=attn_drop, proj_drop=drop, use_flash=use_flash)
        self.norm1 = nn.LayerNorm(dim)
        self.window = WindowBankAttention(
            dim, num_heads, grid, window_size,
            compress_k=linformer_k if faithful else None, mask_padding=not faithful, **common,
        )
        self.dilated = MultiScaleDilatedAttention(
            dim, num_heads, grid, dilations, pooling="faithful" if faithful else "grid", compress_k=linformer_k, **common
        )
        self.channel_group = ChannelGroupTokenAttention(dim, num_heads, num_groups, **common)
        self.bank = BankCrossAttention(dim, num_heads, **common)
        # Normalise each writing branch's output before it goes into the bank.
        self.write_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        if faithful:
            self.write_norms.requires_grad_(False)  # the seed's writes are outside autograd
        self.fusion = HybridFusion(dim, dim // compress_ratio, num_branches=len(BRANCHES))
        fused = (dim // compress_ratio) * len(BRANCHES)
        self.bottleneck = Mlp(fused, hidden_features=dim // bottleneck_ratio, out_features=dim, drop=drop)
        self.bottleneck.drop1, self.bottleneck.drop2 = Dropout(drop), Dropout(drop)  # the cheaper CPU mask
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = DepthwiseConvFFN(dim, int(dim * mlp_ratio), grid, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, state: BankState, bank: TokenBank, need_weights: bool = False
    ) -> tuple[torch.Tensor, BankState, dict[str, torch.Tensor | None]]:
        h = self.norm1(x)
        outputs, maps = [], {}
        branches = (self.window, self.dilated, self.channel_group)
        for name, branch, write_norm in zip(BRANCHES, branches, self.write_norms):
            out, maps[name] = branch(h, state.keys, state.values, need_weights=need_weights)
            state = bank.write(state, write_norm(out))
            outputs.append(out)
        out, maps["bank"] = self.bank(h, state.keys, state.values, need_weights=need_weights)
        outputs.append(out)
        x = x + self.drop_path(self.bottleneck(self.fusion(outputs)))
        x = x + self.drop_path(self.ffn(self.norm2(x)))
        return x, state, maps

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Fold the LayerNorm affines that feed a Linear alone (the fusion's, and ``norm2`` into the
        FFN's first Linear) into that Linear, in place (for an inference copy)."""
        self.fusion.fuse_for_inference()
        if self.norm2.elementwise_affine:
            fold_affine_into_linear(self.ffn.fc1, self.norm2.weight, self.norm2.bias)
            self.norm2 = nn.LayerNorm(self.norm2.normalized_shape, eps=self.norm2.eps, elementwise_affine=False)


class QAViT(ClassifierContract, nn.Module):
    """QAViT classifier (module docstring).

    Args (beyond the usual sizes):
        patch_size: ``None`` = 4 up to 64 px (CIFAR: 8x8 grid), 16 above.
        compress_ratio: each branch is compressed to ``embed_dim / compress_ratio`` before fusion.
        bottleneck_ratio: the bottleneck MLP's hidden width is ``embed_dim / bottleneck_ratio``.
        mlp_ratio: the conv FFN's hidden width over ``embed_dim`` (the seed's 0.5).
        bank_size: bank tokens ``S`` (tiny 16, small 32 as the seed's code; its README says 16:).
        window_size, dilations, num_groups: of the window, dilated and channel-group branches.
        linformer_k: keys/values the dilated branch compresses its pooled tokens to (``None`` = no
            compression); in ``faithful`` mode also the window branch's (49 -> 64).
        faithful: the seed's model and bank (for comparison; see the module docstring).
        bank_write_rate: the seed's update scale, and the functional bank's initial write gate.
        drop_rate: dropout after each branch, in the bottleneck and the FFN, and on the input tokens.
        attn_drop_rate: dropout on the attention weights of every branch (the seed's 0.1).
        use_flash: let the branches use flash-attn where it qualifies (CUDA, fp16/bf16).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int | None = 16,
        in_chans: int = 3,
        num_classes: int = 100,
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 4,
        compress_ratio: int = 4,
        bottleneck_ratio: int = 2,
        mlp_ratio: float = 0.5,
        bank_size: int = 16,
        window_size: int = 7,
        dilations: Sequence[int] = (1, 2, 3),
        num_groups: int = 8,
        linformer_k: int | None = 64,
        faithful: bool = False,
        bank_write_rate: float = 0.1,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.1,
        drop_path_rate: float = 0.1,
        use_flash: bool = False,
    ) -> None:
        super().__init__()
        patch_size = default_patch_size(img_size) if patch_size is None else patch_size
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if embed_dim % compress_ratio or embed_dim % bottleneck_ratio:
            raise ValueError(
                f"embed_dim {embed_dim} must be divisible by compress_ratio {compress_ratio} and bottleneck_ratio {bottleneck_ratio}"
            )
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.faithful = faithful

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim)
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid[0] * self.grid[1], embed_dim))
        self.pos_drop = Dropout(drop_rate)
        self.token_bank = TokenBank(embed_dim, bank_size, faithful=faithful, write_rate=bank_write_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # 0 ... drop_path_rate
        self.blocks = nn.ModuleList(
            QuadAttentionBlock(
                embed_dim, num_heads, self.grid, compress_ratio, bottleneck_ratio, mlp_ratio, window_size,
                tuple(dilations), num_groups, linformer_k, faithful,
                drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], use_flash=use_flash,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.num_prefix_tokens = 0  # the bank is not part of the token sequence
        self.grad_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The seed's init: every Linear truncated-normal(0.02) with zero bias, LayerNorm
        1/0, convolutions PyTorch's default, position table and bank tokens truncated-normal(0.02),
        Linformer matrices Xavier-uniform, fusion logits ones (the last three set by their modules)."""
        trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position table, bank tokens, the bank's write gates and the fusion logits."""
        names = {"pos_embed", "token_bank.keys", "token_bank.values"}
        if not self.faithful:
            names.add("token_bank.write_gate")
        return names | {f"blocks.{i}.fusion.alpha" for i in range(len(self.blocks))}

    # ----------------------------------------------------------------------------- forward
    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, BankState]:
        """The input tokens (patches, their norm and positions, dropout) and the bank's first state."""
        images = check_grid(images, self.patch_size, self.grid, self.img_size)
        x = self.patch_norm(self.patch_embed(images).flatten(2).transpose(1, 2))
        x = self.pos_drop(x + self.pos_embed)
        return x, self.token_bank.initial_state(x.shape[0])

    def _block_step(
        self, block: QuadAttentionBlock, x: torch.Tensor, state: BankState, need_weights: bool = False
    ) -> tuple[torch.Tensor, BankState, dict[str, torch.Tensor | None]]:
        if self.grad_checkpointing and self.training and not need_weights:
            return checkpoint(block, x, state, self.token_bank, use_reentrant=False)
        return block(x, state, self.token_bank, need_weights=need_weights)

    def _forward_tokens(
        self, images: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor | None]], BankState]:
        x, state = self._embed(images)
        maps = []
        for block in self.blocks:
            x, state, block_maps = self._block_step(block, x, state, need_weights)
            maps.append(block_maps)
        return self.norm(x), maps, state

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, H/p * W/p, embed_dim)``."""
        return self._forward_tokens(x)[0]

    def forward_features_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tokens and ``{"bank_norm": the largest bank-token norm at the end (detached)}``."""
        tokens, _, state = self._forward_tokens(x)
        return tokens, {"bank_norm": torch.cat(state, dim=1).detach().norm(dim=-1).amax()}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``avg``: the mean token; ``""``: every token ``(B, N, C)``."""
        return x.mean(dim=1) if self.global_pool == "avg" else x

    def describe(self) -> str:
        """One line on the bank and grid, logged when fitting starts."""
        return (
            f"QAViT: {'faithful (seed) bank and layouts' if self.faithful else 'functional per-sample bank'}, "
            f"{self.grid[0]}x{self.grid[1]} grid, bank of {self.token_bank.num_tokens} tokens"
        )

    # ----------------------------------------------------------------------------- timm's model API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise LR decay: the stem and the bank (shared by every
        block, so with the stem), one group per block, the final norm; the head is timm's last group."""
        return dict(stem=r"^patch_embed|^patch_norm|^pos_embed|^token_bank",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    head_pools = ("avg", "")  # the mean-pooled tokens, or all of them
    global_pool = "avg"

    def _feature_taps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        x, state = self._embed(images)
        for block in self.blocks:
            x, state, _ = self._block_step(block, x, state)
            yield x

    def init_head(self, head: nn.Linear) -> None:
        """Truncated-normal 0.02 weights and a zero bias, as the seed's init."""
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)

    # ----------------------------------------------------------------------------- analysis
    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, AttentionMap]:
        """Post-softmax weights of every branch (:class:`AttentionMap`), per block ``i`` (``S`` bank tokens):

        * ``"blocks.i.window"`` ``(B, windows, heads, window**2, window**2 + S)`` (the seed's faithful
          mode: ``linformer_k + S`` keys; padded keys get weight 0);
        * ``"blocks.i.dilated"`` ``(B, heads, H*W, pooled + S)``, the last ``S`` keys the bank;
        * ``"blocks.i.channel_group"`` ``(B, groups, heads, H*W, H*W + S)``;
        * ``"blocks.i.bank"`` ``(B, heads, H*W, S)``: the cross-attention to the bank.

        Every row sums to 1. In faithful mode and training, this forward writes to the bank (as any).
        """
        _, maps, _ = self._forward_tokens(x, need_weights=True)
        # Bank keys (and, faithful, Linformer keys) have no place on the grid: these layouts are
        # checked for normalisation, not measured or drawn.
        return {
            f"blocks.{i}.{name}": AttentionMap(m, layout=f"qavit_{name}", grid=self.grid, dim=-1)
            for i, block_maps in enumerate(maps)
            for name, m in block_maps.items()
        }

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """For :func:`vitlab.inference.prepare_for_inference`'s ``fused`` mode: every block folds its
        LayerNorm affines into the Linear they feed (:meth:`QuadAttentionBlock.fuse_for_inference`).
        Edits this network in place: call it on an inference copy, never on one that trains."""
        for block in self.blocks:
            block.fuse_for_inference()

    def fusion_weights(self) -> torch.Tensor:
        """``softmax(alpha)`` of every block, ``(depth, 4)`` in :data:`BRANCHES` order (detached)."""
        return torch.stack([block.fusion.weights().detach() for block in self.blocks])


QAViTConfig = config_dataclass(QAViT)

_NATIVE_32 = dict(img_size=32, patch_size=None, window_size=4, linformer_k=None)

model_cfgs = dict(
    # QAViT-Tiny at 224 px (d 256, 4 heads, depth 12, bank 16): 13,054,564 (faithful) / 12,897,396
    # (default) params at 100 classes. At 32 px it sees a 2x2 grid: use qavit_tiny_32 there.
    qavit_tiny=QAViTConfig(embed_dim=256, num_heads=4, depth=12, bank_size=16, drop_path_rate=0.1),
    # QAViT-Small at 224 px (d 384, 6 heads, depth 16, bank 32 as the seed's code): 38,125,636
    # (faithful) / 37,916,260 (default) params at 100 classes.
    qavit_small=QAViTConfig(embed_dim=384, num_heads=6, depth=16, bank_size=32, drop_path_rate=0.15),
    # QAViT-Tiny on native 32 px CIFAR: patch 4 (8x8 grid), window 4, no Linformer (12,565,620 params).
    qavit_tiny_32=QAViTConfig(embed_dim=256, num_heads=4, depth=12, bank_size=16, drop_path_rate=0.1, **_NATIVE_32),
    # QAViT-Small on native 32 px CIFAR: patch 4 (8x8 grid), window 4, no Linformer.
    qavit_small_32=QAViTConfig(embed_dim=384, num_heads=6, depth=16, bank_size=32, drop_path_rate=0.15, **_NATIVE_32),
)

for _name, _cfg in model_cfgs.items():
    register_model(_name, _cfg, build_from_config(QAViT), module="vitlab.families.QAViTClassifier", recipe="qavit")
