"""How results are shown: the evaluation report of --evaluate as text, and TensorBoard's pictures of each
epoch (the confusion matrix and a grid of predictions). Computes nothing it shows. Why PIL, not a
plotting library: the pictures are drawn every epoch on the training thread, and PIL, already needed for
images, draws them in milliseconds with nothing more to install.

Each picture is a uint8 numpy array (H, W, 3), which `SummaryWriter.add_image(..., dataformats="HWC")`
takes, or which `PIL.Image.fromarray(...).save(...)` writes as a PNG.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tudui.console import shown

WHITE, BLACK, GREY, RED, GREEN = (255, 255, 255), (0, 0, 0), (150, 150, 150), (210, 40, 40), (30, 150, 60)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def describe_checkpoint(path, provenance):
    """One line: what made the checkpoint at PATH, from its PROVENANCE record (None in older files)."""
    if not isinstance(provenance, dict):
        return f"checkpoint {shown(path)}: no record of what made it (an older train.py, or not train.py, wrote it)"
    field = {key: shown(provenance.get(key)) for key in ("version", "git_commit", "torch", "torchvision", "device",
                                                          "command")}
    commit = field["git_commit"] if provenance.get("git_commit") else ""
    return (f"checkpoint {shown(path)}: version {field['version']}{f' (git {commit[:12]}{commit[40:]})' if commit else ''}, "
            f"torch {field['torch']}, torchvision {field['torchvision']}, trained on {field['device']} by "
            f"`{field['command']}`")


def epoch_line(record):
    """The line a run prints after each epoch, from its metrics.jsonl RECORD."""
    val_part = f"val accuracy {record['val_accuracy']:.2%}, " if "val_accuracy" in record else ""
    return (f"epoch {record['epoch']}: train loss {record['train_loss_mean']:.4f}, {val_part}test loss "
            f"{record['test_loss']:.4f}, test accuracy {record['test_accuracy']:.2%}, lr {record['lr']:.4g}, "
            f"{record['epoch_seconds']:.1f} s, "
            f"{record['images_per_s']:.0f} images/s")


def per_class_accuracy(confusion):
    """Each class's accuracy from a confusion matrix (rows: true class, columns: predicted); None for a
    class with no images."""
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(confusion.tolist())]


@dataclass(frozen=True)
class Evaluation:
    """What --evaluate measures: the test split's mean loss and accuracy and its confusion matrix (rows:
    true class, columns: predicted), in the order of CLASSES, the checkpoint's class names; MADE_BY, the
    line that says what made the checkpoint; and for a run with --val-split, the same on the VAL_IMAGES
    training images it held out."""
    test_loss: float
    test_accuracy: float
    confusion: torch.Tensor
    classes: list
    made_by: str = ""
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_images: int = 0

    @property
    def per_class_accuracy(self):
        return dict(zip(self.classes, per_class_accuracy(self.confusion)))


def format_report(evaluation):
    """--evaluate's report: loss and accuracy, per-class accuracy, and the confusion matrix."""
    classes = evaluation.classes
    width = max(6, max(len(c) for c in classes))
    lines = [evaluation.made_by] if evaluation.made_by else []
    lines.append(f"test loss {evaluation.test_loss:.4f}, accuracy {evaluation.test_accuracy:.2%} "
                 f"on {evaluation.confusion.sum().item()} images")
    if evaluation.val_images:
        lines.append(f"validation loss {evaluation.val_loss:.4f}, accuracy {evaluation.val_accuracy:.2%} on the "
                     f"{evaluation.val_images} training images its run held out (--val-split)")
    lines += ["",
              f"{'class':<{width}}  accuracy",
              *(f"{c:<{width}}  {'no test images' if a is None else format(a, '8.2%')}"
                for c, a in evaluation.per_class_accuracy.items()), "",
              "confusion matrix (rows: true class, columns: predicted)",
              " " * width + "".join(f"{c[:6]:>7}" for c in classes)]
    for c, row in zip(classes, evaluation.confusion.tolist()):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def confusion_image(confusion, classes, cell=44):
    """The confusion matrix as a heat map: rows are the true class, columns the predicted one, each
    cell shaded by the share of its row and labelled with its count."""
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    font, margin = _font(12), 90
    size = margin + cell * len(classes) + 10
    picture = Image.new("RGB", (size, size + 20), WHITE)
    draw = ImageDraw.Draw(picture)
    draw.text((margin, 2), "predicted class", fill=BLACK, font=font)
    for i, name in enumerate(classes):
        draw.text((4, margin + i * cell + cell // 2 - 6), name[:11], fill=BLACK, font=font)
        label = Image.new("RGB", (margin - 24, 14), WHITE)
        ImageDraw.Draw(label).text((0, 0), name[:11], fill=BLACK, font=font)
        picture.paste(label.rotate(90, expand=True), (margin + i * cell + cell // 2 - 7, 20))
        for j in range(len(classes)):
            shade = int(255 * (1 - shares[i, j]))
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)
            box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1)
            draw.rectangle(box, fill=colour, outline=GREY)
            draw.text((box[0] + 4, box[1] + cell // 2 - 6), str(counts[i, j]),
                      fill=WHITE if shares[i, j] > 0.6 else BLACK, font=font)
    draw.text((4, size), "rows: true class; cells shaded by share of the row", fill=BLACK, font=font)
    return np.asarray(picture)


def prediction_grid(images, labels, predictions, classes, columns=8, scale=3):
    """Test images with 'predicted (true)' under each; mistakes framed and labelled in red."""
    font = _font(11)
    tile_w, tile_h = 32 * scale, 32 * scale + 28
    rows = -(-len(images) // columns)
    picture = Image.new("RGB", (columns * (tile_w + 6), rows * (tile_h + 6)), WHITE)
    draw = ImageDraw.Draw(picture)
    for k, (image, label, predicted) in enumerate(zip(images, labels, predictions)):
        x, y = (k % columns) * (tile_w + 6) + 3, (k // columns) * (tile_h + 6) + 3
        tile = Image.fromarray(np.asarray(image).transpose(1, 2, 0)).resize((tile_w, 32 * scale), Image.NEAREST)
        picture.paste(tile, (x, y))
        right = int(label) == int(predicted)
        colour = GREEN if right else RED
        draw.rectangle((x - 2, y - 2, x + tile_w + 1, y + 32 * scale + 1), outline=colour, width=2)
        draw.text((x, y + 32 * scale + 2), classes[int(predicted)][:14], fill=colour, font=font)
        draw.text((x, y + 32 * scale + 14), "" if right else f"({classes[int(label)][:12]})", fill=BLACK, font=font)
    return np.asarray(picture)
