"""The pictures of vitlab.evaluate (confusion matrix as CSV and PNG, per-class table, grid of
predictions) on a checkpoint of a short synthetic run, and the convergence plot that vitlab.report
links from report.md."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_evaluate import WNIDS, compose_evaluate, trained_run, write_corruption_fixture  # noqa: F401 (a fixture)
from test_report import _metrics, fake_run
from vitlab.errors import ConfigError
from vitlab.evaluate import PICTURE_FILES, class_names, evaluate
from vitlab.report import report
from vitlab.viz import confusion_figure, predictions_figure, save_figure

pytestmark = pytest.mark.usefixtures("one_thread")


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_evaluate_writes_the_confusion_matrix_the_per_class_table_and_the_predictions(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    cfg = compose_evaluate(f"ckpt_path={ckpt}", "batch_size=12", "warmup_iters=0", out_dir=out)
    scores = evaluate(cfg)["sets"]["all"]
    images = scores["images"]
    assert images == 32
    for name in PICTURE_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    # Rows = true class, columns = predicted: the counts add up to the images scored, the diagonal to top-1.
    rows = read_csv(out / "confusion_matrix.csv")
    names = rows[0][1:]
    assert len(names) == 10 and [r[0] for r in rows[1:]] == names
    matrix = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
    assert matrix.sum().item() == images
    assert matrix.diagonal().sum().item() / images == pytest.approx(scores["top1"], abs=1e-9)

    per_class = read_csv(out / "per_class.csv")
    assert per_class[0] == ["label", "class", "images", "top1", "top5"]
    body = per_class[1:]
    assert [r[1] for r in body] == names
    counts = [int(r[2]) for r in body]
    assert sum(counts) == images and counts == matrix.sum(dim=1).tolist()
    top1 = sum(float(r[3]) * int(r[2]) for r in body if r[3]) / images
    top5 = sum(float(r[4]) * int(r[2]) for r in body if r[4]) / images
    assert top1 == pytest.approx(scores["top1"], abs=1e-5) and top5 == pytest.approx(scores["top5"], abs=1e-5)

    for name in ("confusion_matrix.png", "predictions.png"):
        width, height = png_size(out / name)
        assert 300 <= width <= 2500 and 200 <= height <= 2500, (name, width, height)

    # An earlier evaluation's pictures are not overwritten silently, even alone in the folder.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "predictions.png").write_bytes((out / "predictions.png").read_bytes())
    with pytest.raises(ConfigError, match=r"^out_dir: .* already holds predictions.png; give another out_dir"):
        evaluate(compose_evaluate(f"ckpt_path={ckpt}", out_dir=alone))


def test_pictures_follow_the_scored_prefix_and_can_be_switched_off(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    part = evaluate(compose_evaluate(f"ckpt_path={ckpt}", "batch_size=12", "warmup_iters=0", "limit_batches=1",
                                     "picture_images=5", out_dir=tmp_path / "part"))["sets"]["all"]
    assert part["images"] == 12
    matrix = [[int(v) for v in r[1:]] for r in read_csv(tmp_path / "part" / "confusion_matrix.csv")[1:]]
    assert sum(map(sum, matrix)) == 12
    assert sum(int(r[2]) for r in read_csv(tmp_path / "part" / "per_class.csv")[1:]) == 12

    off = evaluate(compose_evaluate(f"ckpt_path={ckpt}", "warmup_iters=0", "pictures=false", out_dir=tmp_path / "off"))
    assert off["sets"]["all"]["images"] == 32
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == ["eval_metrics.json"]

    with pytest.raises(ConfigError, match=r"^picture_images: expected a number of images >= 0, got -1$"):
        evaluate(compose_evaluate(f"ckpt_path={ckpt}", "picture_images=-1", out_dir=tmp_path / "bad"))


def test_on_corruption_data_the_pictures_are_of_the_clean_set(trained_run, tmp_path):
    write_corruption_fixture(tmp_path / "Tiny-ImageNet-C", corruptions=("fog",), severities=(1,))
    common = [f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "data=tinyimagenet_c",
              f"paths.data_dir={tmp_path}", f"data.train_wnids=[{','.join(WNIDS)}]", "data.num_classes=10", "data.img_size=32",
              "data.persistent_workers=false", "warmup_iters=0"]
    result = evaluate(compose_evaluate(*common, out_dir=tmp_path / "clean"))
    rows = read_csv(tmp_path / "clean" / "per_class.csv")[1:]
    assert sum(int(r[2]) for r in rows) == result["clean"]["images"] == 32  # the run's own test split, not fog/1
    evaluate(compose_evaluate(*common, "clean=null", out_dir=tmp_path / "no_clean"))
    assert not any((tmp_path / "no_clean" / name).exists() for name in PICTURE_FILES)


def test_class_names_come_from_the_data_when_it_has_them():
    class Named:
        classes = ["n01", "n02", "n03"]
        class_names = ["goldfish", "shark", "ray"]

    class Folders:
        classes = ["cat", "dog", "bird"]

    class Unreadable:
        @property
        def classes(self):
            raise ConfigError("data.data_dir: no meta file")

    assert class_names(Named(), 3) == ["goldfish", "shark", "ray"]
    assert class_names(Folders(), 3) == ["cat", "dog", "bird"]
    assert class_names(Folders(), 4) == ["0", "1", "2", "3"]  # names of another number of classes are not used
    assert class_names(Unreadable(), 2) == ["0", "1"]


@pytest.mark.parametrize("num_classes", [3, 20, 100])
def test_the_confusion_matrix_reads_up_to_a_hundred_classes(num_classes, tmp_path):
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randint(0, 5, (num_classes, num_classes), generator=generator)
    matrix += 20 * torch.eye(num_classes, dtype=torch.long)
    matrix[0] = 0  # a class without images draws an empty row
    fig = confusion_figure(matrix, [f"class {i}" for i in range(num_classes)], "test")
    ax = fig.axes[0]
    # Values in every cell up to 20 classes; above, the colours alone. Every class named on both axes.
    assert (len(ax.texts) > 0) == (num_classes <= 20)
    assert len(ax.get_xticks()) == num_classes and len(ax.get_yticks()) == num_classes
    save_figure(fig, tmp_path / "cm.png")
    width, height = png_size(tmp_path / "cm.png")
    assert 400 <= width <= 1800 and 400 <= height <= 1800


def test_the_predictions_grid_marks_the_wrong_ones(tmp_path):
    images = torch.rand(10, 3, 16, 16)
    true = list(range(10))
    predicted = [0, 1, 2, 3, 4, 5, 6, 7, 9, 8]
    fig = predictions_figure(images, true, predicted, [f"c{i}" for i in range(10)], "test", columns=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 10 and sum(t.startswith("✗") for t in titles) == 2
    save_figure(fig, tmp_path / "grid.png")
    png_size(tmp_path / "grid.png")


def write_curves(run: Path, top1: list[float]) -> None:
    """TensorBoard scalars as Lightning logs them: val/top1, val/loss and the epoch, at one step per epoch."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tensorboard"))
    for epoch, value in enumerate(top1):
        step = 10 * (epoch + 1)
        writer.add_scalar("epoch", epoch, step)
        writer.add_scalar("val/top1", value, step)
        writer.add_scalar("val/loss", 2 - value, step)
    writer.close()


def test_report_md_links_the_convergence_plot_only_when_curves_were_drawn(tmp_path):
    with_curves, without = tmp_path / "with", tmp_path / "without"
    for seed, top1 in (("0", 0.50), ("1", 0.54)):
        fake_run(without, f"{seed}_seed={seed}", [f"seed={seed}"], _metrics("vit", top1))
        run = fake_run(with_curves, f"{seed}_seed={seed}", [f"seed={seed}"], _metrics("vit", top1))
        write_curves(run, [0.2, 0.4, top1])
    link = "](convergence.png)"

    table = report(with_curves)
    assert table["curves_drawn"] == 1
    markdown = (with_curves / "report" / "report.md").read_text()
    assert link in markdown and (with_curves / "report" / "convergence.png").is_file()
    assert markdown.index("\n\n") < markdown.index(link)  # under the table (which ends at the first blank line)
    png_size(with_curves / "report" / "convergence.png")

    assert report(without)["curves_drawn"] == 0
    assert link not in (without / "report" / "report.md").read_text()
