"""The package as a user gets it: a wheel in a fresh virtualenv, its console scripts and tab completion,
the docs/python.md example; keys users type (data.subset=100); sweep folder names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import CONF_DIR, ROOT, compose_config
from vitlab.cli import check_overrides_compose
from vitlab.config import _path_safe
from vitlab.errors import ConfigError

TINY_TRAIN = [
    "data=synthetic", "data.train_size=64", "data.val_size=16", "data.test_size=16", "hardware=cpu",
    "hardware.num_workers=0", "recipe.batch_size=16", "recipe.epochs=1", "recipe.repeated_aug=1", "model.net.depth=1",
    "callbacks.progress_bar.kind=tqdm", "trainer.num_sanity_val_steps=0", "logger=csv",
]


def python_example(path: Path) -> str:
    """The first ```python block of a markdown page."""
    found = re.search(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)
    assert found, f"{path} has no python example"
    return found.group(1)


def _site_dirs() -> list[str]:
    """The site-packages folders of the interpreter running the tests: a venv's own, or the system's
    (and the user's) where the tests run outside one."""
    import site

    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if Path(d).is_dir()]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> dict:
    """A wheel built from this checkout, installed with --no-deps into a fresh virtualenv that sees the
    packages of the environment running the tests (torch, Lightning, ...), used from a folder outside
    the checkout.

    ``venv --system-site-packages`` would not do: from inside a virtualenv it exposes the *base*
    interpreter's packages, not the virtualenv's. A ``.pth`` file naming the running environment's
    site-packages folders works for a venv, a conda env and the system Python alike; it lists them as
    plain paths, so their own ``.pth`` files (an editable vitlab among them) are not run and the only
    vitlab the new environment imports is the wheel's."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a copy: a build in the checkout would leave build/ and a stale build/lib
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "vitlab", source / "vitlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dist), str(source)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = dist.glob("vitlab-*.whl")
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    probe = "import site; print(site.getsitepackages()[0])"
    own_site = subprocess.run([str(bin_dir / "python"), "-c", probe], check=True, capture_output=True, text=True,
                              timeout=60).stdout.strip()
    (Path(own_site) / "_tested_environment.pth").write_text("\n".join(_site_dirs()) + "\n")
    # The running environment's pip installs into the new one (the venv has none of its own).
    subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    cwd = base / "work"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return {"bin": bin_dir, "cwd": cwd, "env": env, "root": env_dir}


def run_in(venv: dict, *command: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), cwd=venv["cwd"], env={**venv["env"], **(extra_env or {})},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_imports_from_the_venv_and_runs_the_python_docs_example(venv):
    """One process: where vitlab comes from, then the docs/python.md example as written."""
    script = venv["cwd"] / "python_example.py"
    where = ("import vitlab, vitlab.callbacks, vitlab.datamodules\n"
             "print('WHERE', vitlab.__file__, vitlab.CONF_DIR, vitlab.datamodules.__file__)\n")
    script.write_text(where + python_example(ROOT / "docs" / "python.md"))
    out = run_in(venv, str(venv["bin"] / "python"), str(script)).stdout
    assert "test top-1:" in out
    paths = next(line for line in out.splitlines() if line.startswith("WHERE")).split()[1:]
    root, checkout = venv["root"].resolve(), ROOT.resolve()
    for path in map(Path, paths):
        assert path.resolve().is_relative_to(root) and not path.resolve().is_relative_to(checkout), path
    conf = Path(paths[1])
    assert (conf / "train.yaml").is_file() and (conf / "model" / "vit_diff_entropy.yaml").is_file()
    assert (Path(paths[2]).parent / "imagenet100_classes.txt").is_file()


def test_wheel_trains_evaluates_and_reports(venv):
    run_in(venv, str(venv["bin"] / "vitlab-train"), "-m", *TINY_TRAIN, "seed=0,1")
    (sweep,) = (venv["cwd"] / "multirun").glob("*/*")
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert [p.name[:2] for p in runs] == ["0_", "1_"] and not any(c in p.name for p in runs for c in "=,")
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and 0 <= metrics["test/top1"] <= 1
    ckpt = next((runs[0] / "checkpoints").glob("*.ckpt"))
    run_in(venv, str(venv["bin"] / "vitlab-evaluate"), f"ckpt_path={ckpt}", "hardware=cpu",
           "hardware.num_workers=0", "batch_size=16", "warmup_iters=0", "out_dir=eval")
    assert json.loads(next((venv["cwd"] / "eval").glob("*.json")).read_text())
    run_in(venv, str(venv["bin"] / "vitlab-report"), str(sweep))
    table = (sweep / "report" / "report.md").read_text()
    assert "mini_vit" in table and "| 2 | 0,1 |" in table  # the two seeds: one row, n = 2


def test_tab_completion_of_the_console_script(venv):
    """What bash asks while completing `vitlab-train model=mini<TAB>` (Hydra's completion protocol)."""
    out = run_in(venv, str(venv["bin"] / "vitlab-train"), "-sc", "query=bash",
                 extra_env={"COMP_LINE": "vitlab-train model=mini", "COMP_POINT": "23"}).stdout.split()
    assert out == ["model=mini_vit", "model=mini_vit_d192", "model=mini_vit_d192_l12"]


def test_data_keys_work_without_plus(tmp_path):
    cfg = compose_config(["data=cifar10", "data.subset=100", "data.cache=true", "data.persistent_workers=false"],
                         output_dir=tmp_path)
    assert (cfg.data.subset, cfg.data.cache, cfg.data.persistent_workers) == (100, True, False)
    assert compose_config(["data=synthetic"], output_dir=tmp_path).data.pipeline == "workers"
    with pytest.raises(ConfigError, match=r"^data\.subsett: no such key in the config; did you mean data\.subset\?"):
        check_overrides_compose(["data=cifar10", "data.subsett=100"], CONF_DIR, "train")
    with pytest.raises(ConfigError, match=r"^data\.subset: .*could not be converted to Integer; give a value of that type"):
        check_overrides_compose(["data.subset=many"], CONF_DIR, "train")
    with pytest.raises(ConfigError, match=r"^recipe\.augment\.hflipp: no such key in the config; did you mean recipe\.augment\.hflip\?"):
        check_overrides_compose(["recipe.augment.hflipp=true"], CONF_DIR, "train")


def test_data_subset_reaches_the_datamodule(tmp_path):
    from vitlab.api import build_datamodule

    cfg = compose_config([*TINY_TRAIN, "data.subset=3"], output_dir=tmp_path)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    assert len(datamodule.train_set) + len(datamodule.val_set) == 3 * 10


def test_data_pipeline_is_checked():
    from vitlab.datamodules import SyntheticDataModule

    with pytest.raises(ConfigError, match=r"^data\.pipeline: unknown pipeline 'gpu'; use workers or device"):
        SyntheticDataModule(pipeline="gpu")


@pytest.mark.parametrize("overrides", [
    "model=vit,data.subset=100,recipe.optimizer.lr=0.001",
    ",".join(f"trainer.log_every_n_steps={i}" for i in range(20)),  # longer than a folder name may be
    "recipe.augment.random_erasing_scale=[0.1,0.3],model=mini_vit",
])
def test_sweep_folder_names_pass_back_as_run_dir(overrides):
    # Hydra's override_dirname for these overrides, with the kv_sep and item_sep of hydra/default.yaml.
    text = "__".join(item.replace("=", "@", 1) for item in re.split(r",(?![^\[]*\])", overrides))
    name = _path_safe(text)
    assert len(name) <= 160 and "=" not in name and "," not in name
    (parsed,) = OverridesParser.create().parse_overrides([f"run_dir=multirun/2026-01-01/10-00-00/3_{name}"])
    assert parsed.value() == f"multirun/2026-01-01/10-00-00/3_{name}"
    items = name.split("__")
    if items[-1].count("more-"):  # cut: only whole overrides were kept, then a digest of all
        assert all(item in text.split("__") for item in items[:-1])
        assert _path_safe(text + "__x@1") != name
    else:
        assert name.startswith(text.split("__")[0].replace("[", "-")[:10])
