"""Runs that check instead of training, given train.py's own step and test so that the real code runs: --dry-run
(what the real run would fail on, in seconds, writing nothing) and --evaluate (a checkpoint's score, and with
--mistakes its worst mistakes drawn); and a diverged run stopped before it saves."""
import io
import math
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import torch

from tudui.batches import TestBatches, hold_out
from tudui.checkpoints import FlipAveraged, load_tudui
from tudui.console import say, shown
from tudui.cuda_graph import GraphedStep
from tudui.datasets import load_split
from tudui.distributed import World
from tudui.errors import SettingsError
from tudui.pictures import gallery, picked
from tudui.report import Evaluation, describe_checkpoint, format_report
from tudui.runs import atomic_write, refuse_to_overwrite, run_lock


def dry_run(s, data, device, resumed, train_step, epoch, real_command, train_steps, test_batch):
    """--dry-run: a line each on the data (found, readable, counted per class), the device and the run's folders,
    then TRAIN_STEPS(n), the loop's first n steps of EPOCH (through TRAIN_STEP: a CUDA graph's warm-up, capture and
    replay), and TEST_BATCH(), checked as the real run checks them; then REAL_COMMAND."""
    graphed = isinstance(train_step, GraphedStep)
    counts = torch.bincount(data.train_y.cpu(), minlength=len(data.classes)).tolist()
    per_class = ", ".join(f"{name} {count}" for name, count in zip(data.classes, counts))
    held_out = f", {len(data.val_y)} held out for validation" if s.val_split else ""
    skipped = f", {len(data.skipped)} that cannot be read skipped" if data.skipped else ""
    say(s.quiet, f"data: {len(data.train_y)} training images{held_out}, {len(data.test_y)} test images{skipped} in "
                 f"{shown(s.data_dir)}; training images per class: {per_class}")
    say(s.quiet, f"device: {device}{' (each full batch replayed as a CUDA graph)' if graphed else ''}")
    folders = sorted({str(folder) for folder in check_run_folders(s, resumed)})
    say(s.quiet, f"folders: {' and '.join(folders)} can be created and written")
    losses = train_steps(GraphedStep.EAGER_WARMUP_STEPS + 2 if graphed else 2)
    result = test_batch()
    stop_if_not_finite(losses, result["loss"], epoch * -(-len(data.train_y) // s.batch_size), epoch, s)
    say(s.quiet, f"training: {len(losses)} step{'s' * (len(losses) != 1)} of up to {s.batch_size} images, "
                 f"loss {', '.join(f'{loss:.4f}' for loss in losses.tolist())}")
    say(s.quiet, f"test: one batch of {int(result['confusion'].sum())} images, loss {result['loss']:.4f}")
    print(f"everything is in place; start the run with: {real_command}")


def check_run_folders(settings, resumed):
    """What RunFolder would refuse, found without writing (--dry-run): each folder must take a new file, hold no
    earlier run's checkpoints and not be locked, or be creatable. Returns the two folders (the run's is
    LOGDIR/<timestamp> without --run-name)."""
    run_dir = Path(settings.logdir) / (settings.run_name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    ckpt_dir = Path(settings.ckpt_dir) if settings.ckpt_dir else run_dir
    folders = {run_dir: "--run-name", ckpt_dir: "--ckpt-dir"} if settings.ckpt_dir else {run_dir: "--run-name"}
    for folder, flag in folders.items():
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        try:
            with tempfile.TemporaryFile(dir=existing):  # gone as soon as it is closed
                pass
        except OSError as e:
            raise SettingsError(f"cannot write in {existing} ({e.strerror or e}), where {folder} would be; "
                                f"choose another {'--logdir' if folder == run_dir else flag}") from None
        if (folder / ".lock").exists():
            run_lock(folder, flag).release()
    if ckpt_dir.is_dir():
        refuse_to_overwrite(ckpt_dir, resumed, resumed and settings.resume)
    return run_dir, ckpt_dir


def say_nothing_to_train(s, start_epoch):
    print(f"nothing to train: {s.resume} has already trained {start_epoch} epoch{'s' * (start_epoch != 1)}, "
          f"and --epochs {s.epochs} is the total to reach; give a larger --epochs to train on", file=sys.stderr)


def stop_if_not_finite(losses, test_loss, step, epoch, s):
    """A diverged run stops before its epoch is saved, so best.pth and last.pth stay good. A step's loss is computed
    before its update, so weights the epoch's last step broke show in the test loss alone."""
    finite = torch.isfinite(losses)
    if finite.all() and math.isfinite(test_loss):
        return
    what = (f"the training loss became non-finite at step {step + int((~finite).nonzero()[0]) + 1}"
            if not finite.all() else f"the weights became non-finite at step {step + len(losses)}, the last")
    raise SettingsError(f"{what} (epoch {epoch}); the learning rate is likely too high for this network "
                        f"(--lr {s.lr}): lower it. Checkpoints of earlier epochs are untouched")


def evaluate_checkpoint(s, device, test):
    """--evaluate: the checkpoint's loss, accuracy and confusion matrix on the test split, scored by TEST
    (train.py's), and on the images its run held out (--val-split); printed, and returned as a report.Evaluation."""
    net = load_tudui(s.evaluate, map_location="cpu").to(device, memory_format=torch.channels_last)
    skipped = [] if s.skip_bad_images else None
    images, labels, classes = load_split(s.dataset, s.data_dir, "test", not s.no_download, net.classes, True, skipped)
    if skipped:
        print(f"--skip-bad-images: skipped {len(skipped)} test image{'s' * (len(skipped) != 1)} that cannot be read: "
              f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}", file=sys.stderr)
    if len(classes) != len(net.classes):
        raise SettingsError(f"{s.evaluate} predicts {len(net.classes)} classes but the dataset has "
                            f"{len(classes)}; evaluate it on the dataset it was trained for")
    if classes != net.classes:  # scored all the same: folders named 0..9 are a common way to store CIFAR-10
        print(f"note: the test classes ({', '.join(classes)}) are not the class names of {s.evaluate} "
              f"({', '.join(net.classes)}); test class i in this order is scored as its class i", file=sys.stderr)
    scored = FlipAveraged(net) if s.tta else net  # load_tudui's network normalizes its input itself

    def score(images, labels):
        return test(scored, TestBatches(images.to(device), labels.to(device), None, World()), len(classes), s.amp)
    result = score(images, labels)
    held_out = {}
    config = net.config or {}
    if config.get("val_split") and config.get("dataset") == s.dataset:  # drawn again from the run's seed
        *_, val_x, val_y = hold_out(*load_split(s.dataset, s.data_dir, "train", not s.no_download)[:2],
                                    config["val_split"], config["seed"])
        val = score(val_x, val_y)
        held_out = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_images": len(val_y)}
    evaluation = Evaluation(result["loss"], result["accuracy"], result["confusion"], net.classes,
                            describe_checkpoint(s.evaluate, net.provenance), **held_out)
    print(format_report(evaluation))
    if s.mistakes:
        mistakes = picked(images, labels, result["predicted"].cpu(), result["confidence"].cpu())
        png = io.BytesIO()
        gallery(*mistakes, net.classes, f"{shown(s.evaluate)}: the test images most confidently misclassified"
                ).savefig(png, format="png")
        atomic_write(png.getvalue(), s.mistakes)  # a failure is one line, and the file is untouched
        print(f"the {len(mistakes[0])} test images it got most confidently wrong, drawn in {shown(s.mistakes)}")
    return evaluation
