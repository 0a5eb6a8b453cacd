"""Position encodings as plug-ins: a user's own class, in the user's own package, selected by
``_target_`` and used by everything downstream (training, attention dumps, analysis, export) with no
file of vitlab edited; typed options; the layer-decay groups and weight decay of the table and the
PEG; and older run folders (position nodes with ``table``, checkpoints with ``pos_embed`` and
``peg.*``) still building and loading the same network."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from omegaconf import OmegaConf
from timm.models._manipulate import group_with_matcher
from torch import nn

from conftest import ROOT, SMOKE
from test_attention_plugins import TINY, _run
from vitlab.checkpoint import DigestCheckpointIO
from vitlab.errors import ConfigError
from vitlab.layers.pos_embed import sincos_2d
from vitlab.layers.vit_position import POSITIONS, ViTPosition, position_config
from vitlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: An encoding as a researcher writes it in their own package: a learned row table plus a learned
#: column table.
AXIAL_POSITION = '''
import torch
from torch import nn

from vitlab.layers.vit_position import ViTPosition


class AxialPosition(ViTPosition):
    """A learned row table plus a learned column table: (H + W) * dim parameters, not H * W * dim."""

    def __init__(self, dim, grid, depth, std: float = 0.02, **kwargs):
        if std <= 0:
            raise ValueError(f"position.std: must be positive, got {std}")
        super().__init__(dim, grid, depth, **kwargs)
        self.std = std
        self.table_grid = tuple(grid)
        self.rows = nn.Parameter(torch.zeros(grid[0], 1, dim))
        self.cols = nn.Parameter(torch.zeros(1, grid[1], dim))

    def embed(self, x, grid):
        return x + (self.rows + self.cols).flatten(0, 1)

    def init_weights(self):
        nn.init.normal_(self.rows, std=self.std)
        nn.init.normal_(self.cols, std=self.std)

    def no_weight_decay(self):
        return {"rows", "cols"} | super().no_weight_decay()
'''


class Shifted(ViTPosition):
    """An encoding defined here, for the in-process checks: adds ``shift`` to every patch token."""

    def __init__(self, dim: int, grid: tuple[int, int], depth: int, shift: float = 1.0, **kwargs) -> None:
        super().__init__(dim, grid, depth, **kwargs)
        self.shift = shift

    def embed(self, x, grid):
        return x + self.shift


TARGET = f"{__name__}.Shifted"


def test_a_users_position_trains_dumps_analyzes_and_exports(tmp_path):
    """The whole path from the command line: the encoding lives in a package outside vitlab, its
    option is set with no ``+``, and nothing in vitlab names it."""
    package = tmp_path / "src" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "axial_pos.py").write_text(textwrap.dedent(AXIAL_POSITION))
    cwd, run = tmp_path / "work", tmp_path / "work" / "run"
    cwd.mkdir()
    _run("vitlab.train", *SMOKE, "model=vit", "data.train_size=96", "logger=csv", "model.net.depth=1",
         "model.net.embed_dim=32", "model.net.num_heads=2",
         "model.net.position._target_=mypkg.axial_pos.AxialPosition", "model.net.position.std=0.05",
         "callbacks.attention_dump.every_n_epochs=1", "callbacks.attention_dump.num_images=2",
         f"paths.output_dir={run}", cwd=cwd, pythonpath=tmp_path / "src")

    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    position = saved["hyper_parameters"]["net"]["position"]
    assert (position["_target_"], position["std"]) == ("mypkg.axial_pos.AxialPosition", 0.05)
    assert saved["state_dict"]["net.position.rows"].shape == (8, 1, 32)
    assert saved["state_dict"]["net.position.cols"].shape == (1, 8, 32)
    (dump,) = (run / "attention").glob("*/attention_maps.pt")
    assert sorted(torch.load(dump, map_location="cpu", weights_only=True)["maps"]) == ["blocks.0", "blocks.0.cls"]

    analysis = tmp_path / "analysis"
    _run("vitlab.analyze", f"ckpt_path={ckpt}", "hardware=cpu", "hardware.num_workers=0", "num_images=4",
         f"out_dir={analysis}", cwd=cwd, pythonpath=tmp_path / "src")
    assert "blocks.0" in " ".join(p.read_text() for p in [*analysis.glob("*.csv"), *analysis.glob("*.json")])

    exported = tmp_path / "export"
    _run("vitlab.export", str(run), "--out", str(exported), "--formats", "onnx", "safetensors", cwd=cwd,
         pythonpath=tmp_path / "src")
    assert json.loads((exported / "export.json").read_text())["onnx_check"]["ok"]
    assert not any("axial_pos" in p.name for p in (ROOT / "vitlab").rglob("*.py"))


def test_a_users_class_gets_typed_options_and_the_hooks():
    config = position_config(TARGET, shift=3.0)
    assert (config._target_, config.shift, config.table_drop, config.cpe) == (TARGET, 3.0, 0.0, False)
    with pytest.raises(ValueError, match=r"^position\.shfit: Shifted has no such option; did you mean shift\?"):
        position_config(TARGET, shfit=3.0)
    net = create_model("vit", position={"_target_": TARGET, "shift": 3.0, "cpe": True, "cpe_after": 1}, **TINY).eval()
    assert type(net.position) is Shifted and net.position.after_blocks == (1,)
    x = torch.randn(2, 3, 32, 32)
    patches = net.patch_embed(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(net._embed(x, net.grid)[:, 1:], patches + 3.0)
    assert net(torch.randn(2, 3, 48, 40)).shape == (2, 5)  # no table: any grid
    assert TARGET not in POSITIONS.registry


@pytest.mark.parametrize("target, message", [
    ("lerned", r"^model\.net\.position\._target_: unknown position encoding 'lerned'; did you mean learned\?"),
    ("nopkg.pos.Nope", r"^model\.net\.position\._target_: cannot import nopkg\.pos .*Python path"),
    ("torch.nn.Identity", r"^model\.net\.position\._target_: torch\.nn\.Identity is not a position encoding class; "
                          r"subclass vitlab\.layers\.vit_position\.ViTPosition"),
])
def test_a_bad_target_is_one_line(target, message):
    with pytest.raises(ConfigError, match=message):
        create_model("vit", position={"_target_": target}, **TINY)


def test_each_registered_encoding_is_selected_by_name_on_any_vit_node():
    """Every class takes the options of ``ViTPosition``, so switching ``_target_`` on a node that
    holds them (as ``model.net.position._target_=...`` does on the command line) builds."""
    assert set(POSITIONS.registry) == {"learned", "sincos", "none"}
    node = {"table_drop": 0.0, "token_drop": None, "cpe": False, "cpe_after": 0, "cpe_kernel_size": 3, "cpe_zero_init": False}
    for name, cls in POSITIONS.registry.items():
        net = create_model("vit", position={"_target_": name, **node}, **TINY)
        assert type(net.position) is cls


def test_the_table_is_in_the_stem_group_the_peg_with_its_block_and_neither_decays_wrongly():
    net = create_model("vit", position={"_target_": "learned", "cpe": True, "cpe_after": 1}, **TINY)
    layer = group_with_matcher(net.named_parameters(), net.group_matcher(), reverse=True)
    assert layer["position.pos_embed"] == layer["cls_token"] == layer["patch_embed.weight"] == 0
    assert layer["position.peg.proj.weight"] == layer["position.peg.proj.bias"] == layer["blocks.1.norm1.weight"] == 2
    assert {"cls_token", "position.pos_embed"} <= net.no_weight_decay()
    assert not any(name.startswith("position.peg") for name in net.no_weight_decay())


def test_tables_resample_to_another_grid():
    learned = create_model("vit", **TINY).position
    learned.resample((4, 6))
    assert learned.pos_embed.shape == (1, 24, 32) and learned.table_grid == (4, 6)
    sincos = create_model("vit", position={"_target_": "sincos"}, **TINY).position
    sincos.resample((4, 6))
    torch.testing.assert_close(sincos.pos_embed, sincos_2d(4, 6, 32)[None])


#: Older position nodes (``table`` and PositionConfig's keys) and today's, for the same network.
OLDER_NODES = {
    "vit": ({"table": "learned", "table_drop": 0.0, "token_drop": None, "cpe": False}, {"_target_": "learned"}),
    "vit_pe_dropout": ({"table_drop": 0.1}, {"_target_": "learned", "table_drop": 0.1}),
    "vit_cpe": ({"table": "none", "cpe": True, "cpe_after": 1, "cpe_zero_init": True},
                {"_target_": "none", "cpe": True, "cpe_after": 1, "cpe_zero_init": True}),
    # an older `model.net.position.table=none` override merged into today's node
    "vit_rope": ({"_target_": "learned", "table_drop": 0.0, "table": "none"}, {"_target_": "none"}),
    "mini_vit": ({"table": "sincos", "token_drop": 0.0}, {"_target_": "sincos", "token_drop": 0.0}),
}


@pytest.mark.parametrize("name", sorted(OLDER_NODES))
def test_older_position_nodes_build_the_same_network(name):
    older, today = OLDER_NODES[name]
    torch.manual_seed(0)
    old = create_model(name, position=older, **TINY)
    torch.manual_seed(0)
    new = create_model(name, position=today, **TINY)
    assert old.position_config == new.position_config
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True))


def _older_checkpoint(module: nn.Module) -> dict:
    """A checkpoint as vitlab wrote it before position encodings were classes: the table at
    ``net.pos_embed``, the PEG at ``net.peg.*``."""
    state = {key.replace("net.position.", "net."): value for key, value in module.state_dict().items()}
    return {"state_dict": state, "hyper_parameters": dict(module.hparams), "epoch": 0, "global_step": 0}


@pytest.mark.parametrize("name, position", [
    ("vit_cpe", {"table": "none", "table_drop": 0.0, "token_drop": None, "cpe": True, "cpe_after": 0,
                 "cpe_kernel_size": 3, "cpe_zero_init": False}),
    ("vit", {"table": "learned", "table_drop": 0.0, "token_drop": None, "cpe": True, "cpe_after": 1,
             "cpe_kernel_size": 3, "cpe_zero_init": False}),
])
def test_an_older_run_folder_loads_its_weights(tmp_path, name, position):
    """An older run folder: its config.yaml holds the older position node, its checkpoint the older
    tensor names; ``load_run`` (evaluate, analyze, export, predict) and train's resume read both as
    today's."""
    from vitlab.instantiate import build_module
    from vitlab.runs import load_run

    node = OmegaConf.create({"_target_": "vitlab.families.ImageClassifier", "compile": False, "grad_checkpointing": False,
                             "net": {"name": name, **TINY, "position": position}})
    torch.manual_seed(0)
    module = build_module(node, recipe={})
    (tmp_path / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create({"model": node, "recipe": {}}), tmp_path / "config.yaml")
    older = _older_checkpoint(module)
    assert "net.peg.proj.weight" in older["state_dict"] and "net.position.peg.proj.weight" not in older["state_dict"]
    DigestCheckpointIO().save_checkpoint(older, tmp_path / "checkpoints" / "last.ckpt")

    # train's resume reads the checkpoint through the same loader
    resumed = DigestCheckpointIO().load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert list(resumed["state_dict"]) == list(module.state_dict())
    loaded = load_run(tmp_path / "checkpoints" / "last.ckpt").module
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if name == "vit":
        assert torch.count_nonzero(loaded.net.position.pos_embed) > 0
