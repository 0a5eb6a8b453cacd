"""Mini-ViT: a 675k-parameter ViT for 32x32 images with several CLS tokens and a fixed 2D sin-cos PE.

Re-implementation of the CIFAR-10 model of github.com/AnanasClassic/ViT_SE_project (93.5 % top-1 after
250 epochs). It is a configuration of :class:`vitlab.models.vit.ViT`: ``num_prefix_tokens`` CLS tokens
(zeros: identical at init, the head breaks the symmetry, as the seed), the fixed sin-cos table on the
patches, no input dropout, a head on the concatenated CLS outputs, the seed's bias pattern (no bias in
QKV and the MLP, a bias in the attention output projection) and PyTorch's default init, kept so that
the seed configuration has exactly 674,890 parameters.
"""

from __future__ import annotations

from vitlab.compat import upgrade_flat_vit_settings
from vitlab.layers.vit_attention import attention_config
from vitlab.layers.vit_position import position_config
from vitlab.models._registry import build_from_config, register_model
from vitlab.models.vit import BlockConfig, ViT, ViTConfig

__all__ = ["model_cfgs"]

_MINI_VIT = dict(
    img_size=32, patch_size=4, num_classes=10, drop_rate=0.1, head_pool="concat_prefix", init="torch",
    attention=attention_config("mhsa", qkv_bias=False, proj_bias=True, attn_drop=0.1),
    position=position_config("sincos", token_drop=0.0),
    block=BlockConfig(mlp_ratio=2.0, mlp_bias=False, norm_eps=1e-5),
)

model_cfgs = dict(
    # The seed's CIFAR-10 model: dim 96, depth 9, 12 heads, 2 CLS tokens (674,890 params at 10 classes).
    mini_vit=ViTConfig(**_MINI_VIT, embed_dim=96, depth=9, num_heads=12, num_prefix_tokens=2),
    # The seed's CPU-notebook model: dim 192, depth 9, 6 heads, 1 CLS token (2,674,762 params).
    mini_vit_d192=ViTConfig(**_MINI_VIT, embed_dim=192, depth=9, num_heads=6, num_prefix_tokens=1),
    # The seed's "advanced" model: dim 192, depth 12, 12 heads, 1 CLS token (3,562,378 params).
    mini_vit_d192_l12=ViTConfig(**_MINI_VIT, embed_dim=192, depth=12, num_heads=12, num_prefix_tokens=1),
)

for _name, _cfg in model_cfgs.items():
    register_model(_name, _cfg, build_from_config(ViT), upgrade=upgrade_flat_vit_settings,
                   module="vitlab.families.ImageClassifier", recipe="mini_vit")
