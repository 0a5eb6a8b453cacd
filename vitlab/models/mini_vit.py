"""Mini-ViT: a 675k-parameter ViT for 32x32 images with several CLS tokens and a fixed 2D sin-cos PE.

Re-implementation of the CIFAR-10 model of github.com/AnanasClassic/ViT_SE_project (93.5 % top-1 after
250 epochs), following vitlab's spec ``specs/mini_vit.md``. The bias pattern (no bias in QKV and the MLP,
a bias in the attention output projection) and PyTorch's default init are the seed's, kept so that the
seed configuration has exactly 674,890 parameters.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.layers import TransformerBlock, sincos_2d
from vitlab.layers.attention_maps import AttentionMap, TokenMap
from vitlab.models._registry import build_from_config, config_dataclass, register_model

__all__ = ["MiniViT", "MiniViTConfig", "model_cfgs"]


class MiniViT(nn.Module):
    """Patch conv -> ``num_cls_tokens`` CLS tokens + fixed 2D sin-cos PE -> pre-norm blocks -> head on
    the concatenated CLS outputs."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 96,
        depth: int = 9,
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        num_cls_tokens: int = 2,
        qkv_bias: bool = False,
        mlp_bias: bool = False,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.1,
        drop_path_rate: float = 0.0,
        cls_init: str = "zeros",
    ) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if embed_dim % 4 != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 for the 2D sin-cos PE")
        if num_cls_tokens < 1:
            raise ValueError(f"num_cls_tokens must be at least 1, got {num_cls_tokens}")
        if cls_init not in ("zeros", "trunc_normal"):
            raise ValueError(f"cls_init must be 'zeros' or 'trunc_normal', got {cls_init!r}")
        self.num_classes = num_classes
        self.num_prefix_tokens = num_cls_tokens  # the CLS tokens in front of the patches
        self.grad_checkpointing = False
        self.num_features = embed_dim
        self.img_size = img_size
        grid = img_size // patch_size

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        # Zero CLS tokens are identical at init (the head breaks the symmetry): the seed's choice.
        self.cls_token = nn.Parameter(torch.zeros(1, num_cls_tokens, embed_dim))
        if cls_init == "trunc_normal":
            trunc_normal_(self.cls_token, std=0.02)
        # CLS rows stay zero: the CLS tokens carry no position. Not persistent: it is derived from
        # the config, so checkpoints need not carry it.
        pos_embed = torch.zeros(1, num_cls_tokens + grid * grid, embed_dim)
        pos_embed[0, num_cls_tokens:] = sincos_2d(grid, grid, embed_dim)
        self.register_buffer("pos_embed", pos_embed, persistent=False)

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                mlp_bias=mlp_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(num_cls_tokens * embed_dim, num_classes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, num_cls_tokens + patches, embed_dim)``."""
        x = self._embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x, _ = checkpoint(block, x, use_reentrant=False)
            else:
                x, _ = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, : self.num_prefix_tokens].flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def describe(self) -> str:
        """The attention shapes per block (the seed verified them at run time), logged when fitting starts."""
        attn = self.blocks[0].attn
        heads, head_dim, tokens = attn.num_heads, attn.head_dim, self.pos_embed.shape[1]
        return (
            f"Mini-ViT attention shapes per block: q/k/v (B, {heads}, {tokens}, {head_dim}), "
            f"A (B, {heads}, {tokens}, {tokens}), merged heads (B, {tokens}, {heads * head_dim})"
        )

    # ----------------------------------------------------------------------------- timm's model API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise LR decay: stem, one per block, final norm, head."""
        return dict(stem=r"^cls_token|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head on the concatenated CLS outputs for ``num_classes``; 0 = no head."""
        if global_pool not in (None, "token"):
            raise ValueError(f"Mini-ViT pools its CLS tokens; global_pool={global_pool!r} is not supported")
        self.num_classes = num_classes
        width = self.num_prefix_tokens * self.num_features
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def timm_reference(self) -> tuple[str, nn.Module]:
        """timm's VisionTransformer at this network's shape (tokens, widths, heads, biases, dropout),
        the yardstick of ``python -m vitlab.bench --against timm``. Extra CLS tokens are timm's
        register tokens; timm's MLP keeps its biases (it has no switch for them)."""
        from timm.models.vision_transformer import VisionTransformer

        block = self.blocks[0]
        patch = self.patch_embed.kernel_size[0]
        net = VisionTransformer(
            img_size=self.img_size,
            patch_size=patch,
            num_classes=self.num_classes,
            embed_dim=self.num_features,
            depth=len(self.blocks),
            num_heads=block.attn.num_heads,
            mlp_ratio=block.mlp.fc1.out_features / self.num_features,
            qkv_bias=block.attn.qkv.bias is not None,
            class_token=True,
            reg_tokens=self.num_prefix_tokens - 1,
            global_pool="token",
            proj_drop_rate=block.attn.proj_drop.p,
            attn_drop_rate=block.attn.attn_drop,
        )
        label = f"VisionTransformer d{self.num_features} L{len(self.blocks)} h{block.attn.num_heads} p{patch}"
        return label, net

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, AttentionMap]:
        """Post-softmax attention of every block: ``{"blocks.i": TokenMap (B, heads, N, N)}``, the
        CLS tokens first."""
        side = x.shape[-1] // self.patch_embed.kernel_size[0]
        x = self._embed(x)
        maps = {}
        for i, block in enumerate(self.blocks):
            x, w = block(x, need_weights=True)
            maps[f"blocks.{i}"] = TokenMap(w, grid=(side, side), prefix_tokens=self.num_prefix_tokens)
        return maps


MiniViTConfig = config_dataclass(MiniViT)

model_cfgs = dict(
    # The seed's CIFAR-10 model: dim 96, depth 9, 12 heads, 2 CLS tokens (674,890 params at 10 classes).
    mini_vit=MiniViTConfig(embed_dim=96, depth=9, num_heads=12, num_cls_tokens=2),
    # The seed's CPU-notebook model: dim 192, depth 9, 6 heads, 1 CLS token (2,674,762 params).
    mini_vit_d192=MiniViTConfig(embed_dim=192, depth=9, num_heads=6, num_cls_tokens=1),
    # The seed's "advanced" model: dim 192, depth 12, 12 heads, 1 CLS token (3,562,378 params).
    mini_vit_d192_l12=MiniViTConfig(embed_dim=192, depth=12, num_heads=12, num_cls_tokens=1),
)

for _name, _cfg in model_cfgs.items():
    register_model(_name, _cfg, build_from_config(MiniViT))
