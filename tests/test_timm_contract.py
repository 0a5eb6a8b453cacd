"""timm's classifier semantics on one network of each vitlab family: num_classes=0 gives the pooled
features, head_hidden_size is their width, global_pool='' the unpooled tokens or map."""

import pytest
import torch

from vitlab.models import create_model

NETWORKS = {  # one per family, at its native 32 px size (cut down where that is cheap)
    "mini_vit": dict(depth=2),
    "vit_rope_mixed": dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3),
    "outgrid_7m": dict(depths=(1, 1, 1, 1)),
    "qavit_tiny_32": dict(depth=2),
}
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_num_classes_0_at_build_gives_the_pooled_features(name):
    net = create_model(name, num_classes=0, **NETWORKS[name]).eval()
    with torch.no_grad():
        features = net(X)
        assert features.shape == (2, net.head_hidden_size)
        torch.testing.assert_close(features, net.forward_head(net.forward_features(X), pre_logits=True))
    assert isinstance(net.get_classifier(), torch.nn.Identity) and net.num_classes == 0


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_head_hidden_size_is_what_the_head_reads_and_reset_keeps_the_forward(name):
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, **NETWORKS[name]).eval()
    with torch.no_grad():
        pre = net.forward_head(net.forward_features(X), pre_logits=True)
        assert pre.shape[-1] == net.head_hidden_size == net.get_classifier().in_features
        torch.testing.assert_close(net(X), net.get_classifier()(pre))  # features + head == forward
        net.reset_classifier(0)
        torch.testing.assert_close(net(X), pre)
        net.reset_classifier(0, "")  # unpooled: what forward_features gives
        torch.testing.assert_close(net(X), net.forward_features(X))


def test_mini_vit_declares_the_width_of_its_two_cls_tokens():
    net = create_model("mini_vit", num_classes=10)
    assert net.num_features == 96 and net.head_hidden_size == 192  # two CLS outputs side by side
    net.reset_classifier(5, "token")  # timm's pooling: the first CLS only
    assert net.head_hidden_size == 96 and net(X).shape == (2, 5)


def test_vit_pools_as_timm_names_it():
    net = create_model("vit_rope_mixed", num_classes=10, **NETWORKS["vit_rope_mixed"]).eval()
    tokens = net.forward_features(X)
    net.reset_classifier(0, "avg")
    torch.testing.assert_close(net(X), tokens[:, 1:].mean(dim=1))
    net.reset_classifier(7, "")  # timm's ViT: one prediction per token
    assert net(X).shape == (2, tokens.shape[1], 7)


def test_a_feature_map_takes_no_unpooled_head():
    net = create_model("outgrid_7m", num_classes=10, **NETWORKS["outgrid_7m"])
    with pytest.raises(ValueError, match=r"^OutGridViT: global_pool='' gives the feature map, which takes no head"):
        net.reset_classifier(5, "")
    net.reset_classifier(0, "")
    assert net(X).shape == (2, 256, 4, 4)
