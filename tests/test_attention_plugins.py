"""Attention layers as plug-ins: a user's own class, in the user's own package, selected by ``_target_``
and used by everything downstream (training, attention dumps, analysis, export) with no file of vitlab
edited; typed options; and the flat settings of older run folders still building the same network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SMOKE
from vitlab.errors import ConfigError
from vitlab.layers.attention_maps import TokenMap
from vitlab.layers.vit_attention import ATTENTION_LAYERS, ViTAttention, attend, attention_config
from vitlab.models import create_model, get_model_config

pytestmark = pytest.mark.usefixtures("one_thread")

#: A layer as a researcher writes it in their own package: local attention on the patch grid.
LOCAL_ATTENTION = '''
import torch

from vitlab.layers.attention import attend
from vitlab.layers.vit_attention import ViTAttention


class LocalAttention(ViTAttention):
    """Each patch attends to the CLS tokens and to the patches at most ``window`` grid steps away;
    the CLS tokens attend to everything."""

    def __init__(self, dim, num_heads, window: int = 1, **kwargs):
        if window < 1:
            raise ValueError(f"attention.window: must be at least 1, got {window}")
        super().__init__(dim, num_heads, **kwargs)
        self.window = window

    def _attend(self, q, k, v, ctx, dropout_p, need_weights):
        (h, w), p = ctx.grid, ctx.num_prefix
        cells = torch.arange(h * w, device=q.device)
        rows, cols = cells // w, cells % w
        near = ((rows[:, None] - rows[None]).abs() <= self.window) & ((cols[:, None] - cols[None]).abs() <= self.window)
        mask = torch.ones(p + h * w, p + h * w, dtype=torch.bool, device=q.device)
        mask[p:, p:] = near
        return attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights, attn_mask=mask)
'''


class Doubled(ViTAttention):
    """A layer defined here, for the in-process checks: scores scaled by ``gain``."""

    def __init__(self, dim: int, num_heads: int, gain: float = 2.0, **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.gain = gain

    def _attend(self, q, k, v, ctx, dropout_p, need_weights):
        return attend(q * self.gain, k, v, dropout_p=dropout_p, need_weights=need_weights)


TARGET = f"{__name__}.Doubled"
TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def _run(*command: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(pythonpath), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", *command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_a_users_attention_trains_dumps_analyzes_and_exports(tmp_path):
    """The whole path from the command line, as a user would take it: the layer lives in a package
    outside vitlab, and nothing in vitlab names it."""
    package = tmp_path / "src" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "local_attn.py").write_text(textwrap.dedent(LOCAL_ATTENTION))
    cwd, run = tmp_path / "work", tmp_path / "work" / "run"
    cwd.mkdir()
    _run("vitlab.train", *SMOKE, "model=vit", "data.train_size=96", "logger=csv", "model.net.depth=1",
         "model.net.embed_dim=32", "model.net.num_heads=2",
         "model.net.attention._target_=mypkg.local_attn.LocalAttention", "model.net.attention.window=1",
         "callbacks.attention_dump.every_n_epochs=1", "callbacks.attention_dump.num_images=2",
         f"paths.output_dir={run}", cwd=cwd, pythonpath=tmp_path / "src")

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2  # 96 images - 32 held out, batch 32: two steps
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["net"]["attention"]
    assert saved == {"_target_": "mypkg.local_attn.LocalAttention", "window": 1, **{
        k: v for k, v in saved.items() if k not in ("_target_", "window")}}
    (dump,) = (run / "attention").glob("*/attention_maps.pt")
    dumped = torch.load(dump, map_location="cpu", weights_only=True)
    assert sorted(dumped["maps"]) == ["blocks.0", "blocks.0.cls"]
    assert dumped["layouts"]["blocks.0"]["layout"] == "tokens"
    weights = dumped["maps"]["blocks.0"]
    assert weights.shape == (2, 2, 1 + 64, 1 + 64)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 65))
    # the window holds: the first patch (top left) gives no weight to the last one (bottom right)
    assert float(weights[:, :, 1, -1].abs().max()) == 0.0 and float(weights[:, :, 1, 2].min()) > 0
    assert list((run / "attention").glob("*/blocks.0.cls.png"))

    analysis = tmp_path / "analysis"
    _run("vitlab.analyze", f"ckpt_path={ckpt}", "hardware=cpu", "hardware.num_workers=0", "num_images=4",
         f"out_dir={analysis}", cwd=cwd, pythonpath=tmp_path / "src")
    assert "blocks.0" in " ".join(p.read_text() for p in analysis.glob("*.csv")) or \
        "blocks.0" in " ".join(p.read_text() for p in analysis.glob("*.json"))

    exported = tmp_path / "export"
    _run("vitlab.export", str(run), "--out", str(exported), "--formats", "onnx", "safetensors", cwd=cwd,
         pythonpath=tmp_path / "src")
    summary = json.loads((exported / "export.json").read_text())
    assert summary["onnx_check"]["ok"]
    assert not any("local_attn" in p.name for p in (ROOT / "vitlab").rglob("*.py"))


def test_a_users_class_gets_typed_options_maps_and_init():
    config = attention_config(TARGET, gain=3.0)
    assert (config._target_, config.gain, config.qkv_bias, config.rope) == (TARGET, 3.0, True, None)
    with pytest.raises(ValueError, match=r"^attention\.gian: Doubled has no such option; did you mean gain\?"):
        attention_config(TARGET, gian=3.0)
    torch.manual_seed(0)
    net = create_model("vit", attention={"_target_": TARGET, "gain": 3.0}, **TINY).eval()
    assert all(type(block.attn) is Doubled and block.attn.gain == 3.0 for block in net.blocks)
    assert torch.count_nonzero(net.blocks[0].attn.qkv.bias) == 0  # B0's init reached the user's layer
    maps = net.attention_maps(torch.randn(2, 3, 32, 32))
    assert isinstance(maps["blocks.1"], TokenMap) and float(maps["blocks.1"].normalisation_error()) < 1e-5
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert TARGET not in ATTENTION_LAYERS


@pytest.mark.parametrize("target, message", [
    ("mhsaa", r"^model\.net\.attention\._target_: unknown attention 'mhsaa'; did you mean mhsa\?"),
    ("nopkg.attn.Nope", r"^model\.net\.attention\._target_: cannot import nopkg\.attn .*Python path"),
    ("torch.zeros", r"^model\.net\.attention\._target_: torch\.zeros is not an nn\.Module class"),
])
def test_a_bad_target_is_one_line(target, message):
    with pytest.raises(ConfigError, match=message):
        create_model("vit", attention={"_target_": target}, **TINY)


def test_each_registered_layer_is_selected_by_name():
    assert set(ATTENTION_LAYERS) >= {"mhsa", "diffsim", "suppress", "diff", "alibi"}
    for name, cls in ATTENTION_LAYERS.items():
        net = create_model("vit", attention={"_target_": name}, **TINY)
        assert type(net.blocks[0].attn) is cls


#: ``model.net`` of the ViT family as older run folders hold it (config.yaml and checkpoints): every
#: constructor argument flat, at B0's values.
FLAT_B0 = dict(
    img_size=32, patch_size=None, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
    qkv_bias=True, proj_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, pe_drop_rate=0.0,
    ape=True, attention="mhsa", rope=None, rope_theta=None, diff_boundary="sequence", suppression_mode="token_conv",
    suppression_radius=1, lambda_mode="replace", entropy_source="pixels", entropy_mean=[0.485, 0.456, 0.406],
    entropy_std=[0.229, 0.224, 0.225], alibi_distance="euclidean", cpe=False, cpe_after=0, cpe_kernel_size=3,
    cpe_zero_init=False, legacy_init=False, norm_eps=1e-6, num_prefix_tokens=1, sincos_pe=False, pos_drop_rate=None,
    mlp_bias=True, head_pool="token", init="b0", cls_init="zeros",
)
#: Each network's flat settings then (its registry entry's changes to B0).
FLAT = {
    "vit_pe_dropout": dict(pe_drop_rate=0.1),
    "vit_suppress": dict(attention="suppress", suppression_radius=2, legacy_init=True),
    "vit_rope_axial": dict(rope="axial", ape=False, rope_theta=50.0),
    "vit_diff_entropy": dict(attention="diff", qkv_bias=False, proj_bias=False, entropy_source="tokens"),
    "vit_cpe": dict(cpe=True, cpe_after=1, ape=False, cpe_zero_init=True),
    "mini_vit": dict(mlp_ratio=2.0, qkv_bias=False, mlp_bias=False, drop_rate=0.1, attn_drop_rate=0.1,
                     pos_drop_rate=0.0, ape=False, sincos_pe=True, head_pool="concat_prefix", init="torch",
                     norm_eps=1e-5, num_prefix_tokens=2),
}
#: The same networks in today's form.
NESTED = {
    "vit_pe_dropout": dict(position={"_target_": "learned", "table_drop": 0.1}),
    "vit_suppress": dict(attention={"_target_": "suppress", "radius": 2, "seed_init": True}),
    "vit_rope_axial": dict(attention={"_target_": "mhsa", "rope": "axial", "rope_theta": 50.0}, position={"_target_": "none"}),
    "vit_diff_entropy": dict(attention={"_target_": "diff", "entropy_source": "tokens", "lambda_mode": "replace"}),
    "vit_cpe": dict(position={"_target_": "none", "cpe": True, "cpe_after": 1, "cpe_zero_init": True}),
    "mini_vit": dict(),
}


@pytest.mark.parametrize("name", sorted(FLAT))
def test_flat_settings_of_older_run_folders_build_the_same_network(name):
    size = {k: FLAT_B0[k] for k in ("img_size", "num_classes", "embed_dim", "depth", "num_heads")}
    torch.manual_seed(0)
    old = create_model(name, **{**FLAT_B0, **FLAT[name]})
    torch.manual_seed(0)
    new = create_model(name, **size, **NESTED[name])
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(old.state_dict()[k], new.state_dict()[k]) for k in old.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(old.eval()(x), new.eval()(x), rtol=0, atol=0)
    assert old.describe() == new.describe()


def test_the_registry_holds_typed_nodes():
    cfg = get_model_config("vit_suppress")
    assert (cfg.attention._target_, cfg.attention.mode, cfg.attention.radius) == ("suppress", "token_conv", 1)
    assert get_model_config("vit_rope").position._target_ == "none"
    assert get_model_config("mini_vit").block.mlp_ratio == 2.0


def test_a_run_folder_with_flat_overrides_continues(tmp_path, monkeypatch):
    """A run folder whose .hydra/overrides.yaml holds a flat ViT key of earlier versions
    (``model.net.rope=axial``) continues with ``run_dir=``: the key is read as today's."""
    from test_config_errors import run_in_process

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    args = ["model=vit", "data=synthetic", "hardware=cpu", "hardware.num_workers=0", "data.train_size=64",
            "data.val_size=32", "data.test_size=32", "recipe.batch_size=32", "recipe.repeated_aug=1",
            "recipe.epochs=2", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "paths.log_dir=logs",
            "model.net.depth=1", "model.net.embed_dim=32", "model.net.num_heads=2", "model.net.attention.rope=axial",
            "model.net.position._target_=none", "test=false"]
    code, stderr = run_in_process(args)
    assert code == 0, stderr[-2000:]
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    saved = run_dir / ".hydra" / "overrides.yaml"
    text = saved.read_text()
    assert "model.net.attention.rope=axial" in text and "model.net.position._target_=none" in text
    saved.write_text(text.replace("model.net.attention.rope=axial", "model.net.rope=axial")
                     .replace("model.net.position._target_=none", "model.net.ape=false"))

    code, stderr = run_in_process([f"run_dir={run_dir}", "trainer.max_epochs=2"])
    assert code == 0, stderr[-2000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2
    net = ckpt["hyper_parameters"]["net"]
    assert net["attention"]["rope"] == "axial" and net["position"]["_target_"] == "none"


def test_hydra_instantiate_of_a_model_node_leaves_the_attention_to_the_network(tmp_path):
    """``hydra.utils.instantiate(cfg.model)``, as lightning-hydra-template users write it: the model
    files say ``_recursive_: false``, so the attention node's ``_target_`` reaches the network."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import compose_config

    cfg = compose_config(["model=vit_suppress", "data=synthetic", "model.net.depth=1"], output_dir=tmp_path)
    module = instantiate(cfg.model, recipe=OmegaConf.to_container(cfg.recipe, resolve=True))
    assert type(module.net.blocks[0].attn).__name__ == "SuppressionAttention"


@pytest.mark.parametrize("target", ["vitlab.families.vit.ViTClassifier", "vitlab.families.ViTClassifier",
                                    "vitlab.families.mini_vit.MiniViTClassifier", "vitlab.families.OutGridClassifier"])
def test_an_older_config_yaml_builds_its_module(target):
    """A ``model`` node as an older run folder's config.yaml holds it: a retired family class and
    the flat ViT settings."""
    from omegaconf import OmegaConf

    from vitlab.families import ImageClassifier
    from vitlab.instantiate import build_module

    node = OmegaConf.create({"_target_": target, "compile": False, "grad_checkpointing": False,
                             "net": {"name": "vit_suppress", **FLAT_B0, **FLAT["vit_suppress"]}})
    module = build_module(node, recipe={})
    assert type(module) is ImageClassifier
    attn = module.net.blocks[0].attn
    assert (type(attn).__name__, attn.radius, attn.seed_init) == ("SuppressionAttention", 2, True)
