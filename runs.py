"""The run folder and everything written to it: its name, its lock, atomic files, checkpoints,
metrics.jsonl, config.json, the TensorBoard writer, and the bookkeeping that lets a run resume where it
stopped. Decides nothing about training.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from cli import say
from config import plain_config
from data import to_input
from errors import SettingsError
from report import confusion_image, prediction_grid

try:
    import fcntl
except ModuleNotFoundError:  # Windows, which locks byte ranges of a file instead (RunLock)
    fcntl = None
    import msvcrt


@dataclass(frozen=True)
class TrainResult:
    """What a training run returns. HISTORY is metrics.jsonl as columns, one value per epoch:
    plt.plot(result.history["epoch"], result.history["test_accuracy"]). Under torchrun only rank 0 has
    folders and a history; the other ranks write nothing."""
    run_dir: Path | None
    ckpt_dir: Path | None
    epoch: int | None  # the last epoch trained, or the resumed checkpoint's when there was none left to train
    step: int
    test_loss: float | None
    test_accuracy: float | None
    best_accuracy: float
    history: dict = field(default_factory=dict, repr=False)

    @property
    def best_path(self):
        return self.ckpt_dir / "best.pth" if self.ckpt_dir else None

    @property
    def last_path(self):
        return self.ckpt_dir / "last.pth" if self.ckpt_dir else None


def read_history(metrics_path):
    """metrics.jsonl as columns: {key: [value of epoch 0, value of epoch 1, ...]}."""
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    return {key: [record.get(key) for record in records] for key in dict.fromkeys(k for r in records for k in r)}


class RunLock:
    """An OS lock on a folder a run writes to: a second run on the same folder is refused, and the lock
    dies with its process, so a killed run never blocks its own resume. flock on POSIX; on Windows, a
    lock on the first byte of the same file."""

    def __init__(self, folder, flag):
        self.file = open(Path(folder) / ".lock", "a+")
        held_elsewhere = BlockingIOError if fcntl else OSError  # msvcrt says so with a plain OSError
        try:
            if fcntl:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                self.file.seek(0)
                msvcrt.locking(self.file.fileno(), msvcrt.LK_NBLCK, 1)
        except held_elsewhere:
            self.file.close()
            raise SettingsError(f"another run is writing to {folder}; wait for it to finish "
                                f"or pick another {flag}") from None

    def release(self):
        if not fcntl:  # closing would release it too, but Windows may take a while to
            self.file.seek(0)
            msvcrt.locking(self.file.fileno(), msvcrt.LK_UNLCK, 1)
        self.file.close()


def atomic_write(data, path):
    """Write bytes so that PATH is always either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # POSIX: sync the folder too, so that the rename survives a power cut
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)  # (Windows cannot open a folder)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_run_file(data, path):
    """atomic_write, with a failure (full disk, read-only folder) reported as one line."""
    try:
        atomic_write(data, path)
    except OSError as e:
        raise cannot_write(path, e) from None


def append_metrics(metrics_file, record):
    """One metrics.jsonl line. The epoch's checkpoints are already saved, so a failure loses only this line."""
    try:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    except OSError as e:
        raise cannot_write(metrics_file.name, e) from None


def cannot_write(path, error):
    return SettingsError(f"cannot write {path} ({error.strerror or error}); free some space or choose another "
                         "--logdir/--ckpt-dir; the files already there are intact")


def save_checkpoints(state, ckpt_dir, epoch, is_best):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for name in [f"tudui_epoch_{epoch}.pth", "last.pth"] + (["best.pth"] if is_best else []):
        write_run_file(buffer.getvalue(), Path(ckpt_dir) / name)


def truncate_metrics(path, last_epoch):
    """Drop metrics.jsonl lines of epochs after the checkpoint a run resumes from, and any line a crash
    left torn (the file is appended to, not replaced); returns the epochs kept."""
    if not path.exists():
        return set()
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    kept = [record for record in records
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= last_epoch]
    write_run_file("".join(json.dumps(record) + "\n" for record in kept).encode(), path)
    return {record["epoch"] for record in kept}


def resumable_checkpoint(ckpt_dir):
    """The checkpoint in CKPT_DIR to resume its run from: last.pth, else the latest epoch's, else best.pth;
    None when it holds none."""
    ckpt_dir = Path(ckpt_dir)
    epochs = [p for p in ckpt_dir.glob("tudui_epoch_*.pth") if p.stem.rpartition("_")[2].isdigit()]
    candidates = [ckpt_dir / "last.pth", *sorted(epochs, key=lambda p: -int(p.stem.rpartition("_")[2])),
                  ckpt_dir / "best.pth"]
    return next((path for path in candidates if path.exists()), None)


def refuse_to_overwrite(ckpt_dir, resume=None):
    """A new run never writes over the checkpoints of an earlier one; a run resumed from a checkpoint in
    CKPT_DIR (RESUME) goes on writing there."""
    if resume and Path(resume).resolve().parent == Path(ckpt_dir).resolve():
        return
    found = resumable_checkpoint(ckpt_dir)
    if found is not None:
        raise SettingsError(f"{ckpt_dir} already holds the checkpoints of an earlier run; continue it with "
                            f"--resume {found}, or give this run another --run-name (or --ckpt-dir)")


def check_run_folders(args, resumed):
    """What RunRecorder would refuse, found without writing anything (--dry-run): for the run's folder and
    the checkpoint folder, an existing one must take a new file, hold no earlier run's checkpoints and not
    be locked by a running run; a missing one must be creatable. Returns the two folders; the run's is
    LOGDIR/<timestamp> when no --run-name is given."""
    run_dir = Path(args.logdir) / (args.run_name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else run_dir
    folders = {run_dir: "--run-name", ckpt_dir: "--ckpt-dir"} if args.ckpt_dir else {run_dir: "--run-name"}
    for folder, flag in folders.items():
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        try:
            with tempfile.TemporaryFile(dir=existing):  # gone as soon as it is closed
                pass
        except OSError as e:
            raise SettingsError(f"cannot write in {existing} ({e.strerror or e}), where {folder} would be; "
                                f"choose another {'--logdir' if folder == run_dir else flag}") from None
        if (folder / ".lock").exists():
            RunLock(folder, flag).release()
    if ckpt_dir.is_dir():
        refuse_to_overwrite(ckpt_dir, resumed and args.resume)
    return run_dir, ckpt_dir


def claim_run_name(logdir):
    """A new folder in LOGDIR named for the current time, -2, -3, ... added when runs start in the same
    second: made here, at once, so that runs started together never share one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        name = stamp if n == 1 else f"{stamp}-{n}"
        try:
            (logdir / name).mkdir()
            return name
        except FileExistsError:
            continue


class RunRecorder:
    """Everything a run writes: its folder, lock, TensorBoard writer, metrics.jsonl and checkpoints.
    Under torchrun only rank 0 has one; the other ranks write nothing."""

    def __init__(self, args, resumed, start_epoch, step):
        try:
            if args.run_name is None:
                args.run_name = claim_run_name(Path(args.logdir))
            self.run_dir = Path(args.logdir) / args.run_name
            self.ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else self.run_dir
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SettingsError(f"cannot create {e.filename} ({e.strerror}); choose another --logdir or "
                                "--ckpt-dir") from None
        self.locks = [RunLock(self.run_dir, "--run-name")]
        if self.ckpt_dir.resolve() != self.run_dir.resolve():  # a shared --ckpt-dir needs its own lock
            try:
                self.locks.append(RunLock(self.ckpt_dir, "--ckpt-dir"))
            except SettingsError:
                self.locks[0].release()
                raise
        self.writer = self.metrics_file = None
        try:
            refuse_to_overwrite(self.ckpt_dir, resumed and args.resume)
            from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only training needs it

            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=step + 1 if resumed else None)
            metrics_path = self.run_dir / "metrics.jsonl"
            logged_epochs = truncate_metrics(metrics_path, start_epoch - 1)
            self.metrics_file = open(metrics_path, "a")
            if resumed and resumed["epoch"] not in logged_epochs:
                # killed between saving the checkpoint and logging its epoch: log the epoch from the checkpoint
                log_epoch_scalars(self.writer, resumed["metrics"], resumed["classes"])
                self.writer.flush()
                append_metrics(self.metrics_file, resumed["metrics"])
            write_run_file(json.dumps(plain_config(args), indent=2).encode(), self.run_dir / "config.json")
        except BaseException:  # a full disk here must not leave the lock or files open (notebooks go on)
            self.close()
            raise

    def epoch_done(self, checkpoint, is_best, losses, lrs, start_step, args, classes, confusion, grid):
        save_checkpoints(checkpoint, self.ckpt_dir, checkpoint["epoch"], is_best)
        log_epoch(self.writer, self.metrics_file, checkpoint["metrics"], losses, lrs, start_step, args, classes,
                  confusion, grid)

    def close(self):
        for opened in (self.writer, self.metrics_file):
            if opened is not None:
                opened.close()
        for lock in self.locks:
            lock.release()


def log_run_start(writer, model, args, data):
    """Once per run (not again on resume): the network graph, and the configuration in the HPARAMS tab,
    written into the run's own folder (add_hparams would make a stray extra run) and tied to its
    test (and validation) accuracy and loss curves."""
    from torch.utils.tensorboard.summary import hparams

    example = to_input(data["test_x"][:1], data["norm"])
    with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns that it is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        writer.add_graph(model, example)
    config = {k: ("none" if v is None else v) for k, v in plain_config(args).items()
              if isinstance(v, (int, float, str, bool)) or v is None}
    metrics = ["test_accuracy", "test_loss"] + (["val_accuracy", "val_loss"] if args.val_split else [])
    for summary in hparams(config, dict.fromkeys(metrics, 0.0)):
        writer._get_file_writer().add_summary(summary)


GRID_IMAGES = 32  # test images shown with their predictions each epoch


@torch.no_grad()
def grid_predictions(model, data):
    """(images, labels, predictions) on the CPU for the first GRID_IMAGES test images."""
    images, labels = data["test_x"][:GRID_IMAGES], data["test_y"][:GRID_IMAGES]
    model.eval()
    predictions = model(to_input(images, data["norm"])).argmax(1)
    model.train()
    return images.cpu(), labels.cpu(), predictions.cpu()


def log_epoch(writer, metrics_file, record, losses, lrs, start_step, args, classes, confusion, grid):
    """TensorBoard scalars and pictures, and one metrics.jsonl line, for a finished epoch."""
    for i in range(len(losses)):
        step = start_step + i + 1  # the tutorial counts steps from 1 and logs when the count hits a multiple
        if step % args.log_every == 0:
            writer.add_scalar("train_loss", losses[i].item(), step)
            writer.add_scalar("lr", lrs[i], step)
            say(args.quiet, f"step {step}, loss {losses[i].item():.4f}")
    log_epoch_scalars(writer, record, classes)
    writer.add_image("confusion_matrix", confusion_image(confusion, classes), record["epoch"], dataformats="HWC")
    writer.add_image("test_predictions", prediction_grid(*grid, classes), record["epoch"], dataformats="HWC")
    writer.flush()
    append_metrics(metrics_file, record)


def log_epoch_scalars(writer, record, classes):
    epoch = record["epoch"]
    for key in ("test_loss", "test_accuracy", "val_loss", "val_accuracy", "train_loss_mean", "train_accuracy",
                "images_per_s", "epoch_seconds"):
        if key in record:  # checkpoints from older versions lack some
            writer.add_scalar(key, record[key], epoch)
    for name, acc in zip(classes, record.get("per_class_accuracy", [])):
        writer.add_scalar(f"per_class_accuracy/{name}", acc, epoch)
