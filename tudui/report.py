"""How results are told as text: --evaluate's report, the line each epoch prints, and what made a
checkpoint. Computes nothing it shows; the pictures are pictures.py's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tudui.console import shown


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
