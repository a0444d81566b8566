"""A run's results and how they are told: what a run and --evaluate return, the lines a run prints,
--evaluate's report, what made a checkpoint, and TensorBoard's curves beyond train.py's, its graph and
hparams. Computes nothing it shows; the pictures are pictures.py's."""
from __future__ import annotations

import json
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tudui import __version__
from tudui.console import shown
from tudui.settings import plain

THE_TUTORIALS = ("test_loss", "test_accuracy")  # the curves train.py logs itself


@dataclass(frozen=True)
class TrainResult:
    """What a run returns; HISTORY is metrics.jsonl as columns, one value per epoch:
    plt.plot(result.history["epoch"], result.history["test_accuracy"]). Under torchrun, rank 0's alone."""
    run_dir: Path | None
    ckpt_dir: Path | None
    epoch: int | None  # the last epoch trained, or the resumed checkpoint's when there was none left to train
    step: int
    test_loss: float | None
    test_accuracy: float | None
    best_accuracy: float
    history: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, run, record, step, best_accuracy):
        history = {}
        if run:
            lines = (run.dir / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
            history = {key: [r.get(key) for r in records] for key in dict.fromkeys(k for r in records for k in r)}
        return cls(run and run.dir, run and run.ckpt_dir, record.get("epoch"), step, record.get("test_loss"),
                   record.get("test_accuracy"), best_accuracy, history)

    @property
    def best_path(self):
        return self.ckpt_dir / "best.pth" if self.ckpt_dir else None

    @property
    def last_path(self):
        return self.ckpt_dir / "last.pth" if self.ckpt_dir else None


@dataclass(frozen=True)
class Evaluation:
    """What --evaluate measures: the test split's mean loss, accuracy and confusion matrix (rows: true class),
    in the order of CLASSES; MADE_BY, what made the checkpoint; with --val-split, the same on its VAL_IMAGES."""
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


def per_class_accuracy(confusion):
    """Each class's accuracy from a confusion matrix (rows: true class); None for a class with no images."""
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(confusion.tolist())]


def provenance(device, command):
    """What makes a checkpoint: the project's version and git commit ("+changes" when its tracked files
    differ; None outside a checkout), torch's and torchvision's, the device, and the call that started it."""
    import torchvision

    root, commit = Path(__file__).resolve().parent.parent, None
    try:
        if (root / ".git").exists():
            git = ["git", "-C", str(root)]
            head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
            changes = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, timeout=10, check=True).stdout.strip()
            commit = head.stdout.strip() + ("+changes" if changes else "") if head.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"version": __version__, "git_commit": commit, "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "device": f"{device} ({name})" if name else str(device),
            "command": command}


def describe_checkpoint(path, provenance):
    """One line: what made the checkpoint at PATH, from its PROVENANCE record (None in older files)."""
    if not isinstance(provenance, dict):
        return f"checkpoint {shown(path)}: no record of what made it (an older train.py, or not train.py, wrote it)"
    keys = ("version", "git_commit", "torch", "torchvision", "device", "command")
    say = {key: shown(provenance.get(key)) for key in keys}
    commit = f" (git {say['git_commit'][:12]}{say['git_commit'][40:]})" if provenance.get("git_commit") else ""
    return (f"checkpoint {shown(path)}: version {say['version']}{commit}, torch {say['torch']}, torchvision "
            f"{say['torchvision']}, trained on {say['device']} by `{say['command']}`")


def first_line(run, device, world, data, optimizer, scheduler):
    """The line a run starts with: its folders, device, data, optimizer and lr scheduler."""
    processes = f" x {world.size} processes" if world.size > 1 else ""
    return (f"run {shown(run.dir)} | checkpoints in {shown(run.ckpt_dir)} | device {device}{processes} | "
            f"{len(data.train_y)} train / {len(data.test_y)} test images, {len(data.classes)} classes | "
            f"{type(optimizer).__name__}, lr {optimizer.param_groups[0]['lr']:.4g}, {type(scheduler).__name__}")


def epoch_line(record):
    """The line a run prints after each epoch, from its metrics.jsonl RECORD."""
    val_part = f"val accuracy {record['val_accuracy']:.2%}, " if "val_accuracy" in record else ""
    return (f"epoch {record['epoch']}: train loss {record['train_loss_mean']:.4f}, {val_part}test loss "
            f"{record['test_loss']:.4f}, test accuracy {record['test_accuracy']:.2%}, lr {record['lr']:.4g}, "
            f"{record['epoch_seconds']:.1f} s, {record['images_per_s']:.0f} images/s")


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
    lines += ["", f"{'class':<{width}}  accuracy",
              *(f"{c:<{width}}  {'no test images' if a is None else format(a, '8.2%')}"
                for c, a in evaluation.per_class_accuracy.items()),
              "", "confusion matrix (rows: true class, columns: predicted)",
              " " * width + "".join(f"{c[:6]:>7}" for c in classes)]
    lines += [f"{c:<{width}}" + "".join(f"{v:>7}" for v in row)
              for c, row in zip(classes, evaluation.confusion.tolist())]
    return "\n".join(lines)


def log_graph_and_settings(writer, model, example, settings):
    """The network's graph, traced on EXAMPLE, and the settings in the HPARAMS tab tied to the test (and
    validation) curves, in the run's own folder, where add_hparams would make a stray extra run."""
    from torch.utils.tensorboard.summary import hparams

    with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns that it is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        writer.add_graph(model, example)
    config = {k: ("none" if v is None else v) for k, v in plain(settings).items()
              if isinstance(v, (int, float, str, bool)) or v is None}
    metrics = ["test_accuracy", "test_loss"] + (["val_accuracy", "val_loss"] if settings.val_split else [])
    for summary in hparams(config, dict.fromkeys(metrics, 0.0)):
        writer.file_writer.add_summary(summary)


def log_epoch_scalars(writer, record, classes, also=()):
    """An epoch's curves beyond the tutorial's (and ALSO): validation, train loss and accuracy, speed, and
    each class's accuracy."""
    for key in (*also, "val_loss", "val_accuracy", "train_loss_mean", "train_accuracy", "images_per_s",
                "epoch_seconds"):
        if key in record:  # checkpoints from older versions lack some
            writer.add_scalar(key, record[key], record["epoch"])
    for name, acc in zip(classes, record.get("per_class_accuracy", [])):
        if acc is not None:
            writer.add_scalar(f"per_class_accuracy/{name}", acc, record["epoch"])
