"""Saving and resuming runs: the run folder (its name, lock, config.json, metrics.jsonl and a SummaryWriter
for the curves beyond train.py's), files written atomically, the checkpoint train.py saves, and a run put
back where its checkpoint left it. Reading a checkpoint is checkpoints.py's; decides nothing about training."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import sys
import threading
from datetime import datetime
from pathlib import Path

import torch

from tudui.checkpoints import (CHECKPOINT_FORMAT, checked_preprocess, load_training_checkpoint, load_weights,
                               read_checkpoint, unwrapped, weights_checksum)
from tudui.console import say, shown
from tudui.errors import CheckpointError, SettingsError
from tudui.pictures import Painter
from tudui.report import THE_TUTORIALS, first_line, log_epoch_scalars, log_graph_and_settings
from tudui.settings import FIELDS, plain


def atomic_write(data, path):
    """Write bytes so that PATH is the old file or the whole new one, even after a power cut; a failure is a
    one-line SettingsError. Our own: no installed library offers os.replace with the folder's fsync."""
    with renamed_into_place(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_with_link(source, path):
    """Make PATH a hard link to SOURCE's file, atomically; without hard links (FAT), a copy."""
    try:
        with renamed_into_place(path) as tmp:
            os.link(source, tmp)
    except SettingsError:  # no hard links here, or a stale temporary in the way
        atomic_write(Path(source).read_bytes(), path)


@contextlib.contextmanager
def renamed_into_place(path):
    """A temporary name beside PATH (.NAME.PID.tmp), renamed over PATH when the block ends, removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # the folder's fsync keeps the rename (POSIX; Windows opens no folder)
            folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise cannot_write(path, e) from None
        raise


def cannot_write(path, error):
    return SettingsError(f"cannot write {path} ({error.strerror or error}); free some space or choose another "
                         "--logdir/--ckpt-dir; the files already there are intact")


def run_lock(folder, flag):
    """An OS lock on a run's folder, held: a second run is refused, and a killed run never blocks its resume."""
    from filelock import FileLock, Timeout

    lock = FileLock(Path(folder) / ".lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SettingsError(f"another run is writing to {folder}; wait for it to finish or pick another "
                            f"{flag}") from None
    return lock


def claim_run_name(logdir):
    """A new folder in LOGDIR named for the time, made at once (-2, -3 ... for runs started in the same second)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        name = stamp if n == 1 else f"{stamp}-{n}"
        with contextlib.suppress(FileExistsError):
            (logdir / name).mkdir()
            return name


class RunFolder:
    """The folder a run writes to, as a with-block: its lock, metrics.jsonl, config.json (with SKIPPED_IMAGES),
    the checkpoints saved through saving(), and a SummaryWriter for the pictures and the curves beyond
    train.py's. Leaving it closes all and releases the lock; a full disk is one line. Rank 0's alone."""

    def __init__(self, settings, resumed, start_epoch, step, skipped_images=()):
        try:
            if settings.run_name is None:
                settings.run_name = claim_run_name(Path(settings.logdir))
            self.dir = Path(settings.logdir) / settings.run_name
            self.ckpt_dir = Path(settings.ckpt_dir) if settings.ckpt_dir else self.dir
            self.dir.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SettingsError(f"cannot create {e.filename} ({e.strerror}); choose another --logdir or "
                                "--ckpt-dir") from None
        self.locks = [run_lock(self.dir, "--run-name")]
        if self.ckpt_dir.resolve() != self.dir.resolve():  # a shared --ckpt-dir needs its own lock
            try:
                self.locks.append(run_lock(self.ckpt_dir, "--ckpt-dir"))
            except SettingsError:
                self.locks[0].release()
                raise
        self.writer = self.train_writer = self.metrics_file = self.painter = None
        # TensorBoard's writer thread hits a full disk first; the run reports it, as one line, at its next write
        hook = self.thread_hook = threading.excepthook
        threading.excepthook = lambda args: issubclass(args.exc_type, OSError) or hook(args)
        try:
            for path in itertools.chain(self.dir.glob(".*.tmp"), self.ckpt_dir.glob(".*.tmp")):
                if re.fullmatch(r"\..+\.\d+\.tmp", path.name) and path.is_file():  # left by a killed save
                    path.unlink(missing_ok=True)
            refuse_to_overwrite(self.ckpt_dir, resumed, resumed and settings.resume)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.dir, purge_step=step + 1 if resumed else None, filename_suffix=".tudui")
            self.painter = Painter(self.writer)
            self.logged_epochs = truncate_metrics(self.dir / "metrics.jsonl", start_epoch - 1)
            self.metrics_file = open(self.dir / "metrics.jsonl", "a")
            config = plain(settings) | ({"skipped_images": list(skipped_images)} if settings.skip_bad_images else {})
            atomic_write(json.dumps(config, indent=2).encode(), self.dir / "config.json")
        except BaseException as e:  # a full disk here must not leave the lock or files open (notebooks go on)
            self.__exit__(type(e), e, None)
            if isinstance(e, OSError):
                raise cannot_write(self.dir, e) from None
            raise

    def __enter__(self):
        return self

    def started(self, writer, model, settings, resumed, example, device, world, data, optimizer, scheduler):
        """The first line; the epoch a resume killed before it was logged; a new run's graph and settings."""
        self.train_writer, self.test_images, self.test_labels = writer, data.test_x, data.test_y
        say(settings.quiet, first_line(self, device, world, data, optimizer, scheduler))
        if data.skipped:
            print(f"--skip-bad-images: skipped {len(data.skipped)} image{'s' * (len(data.skipped) != 1)} that cannot "
                  f"be read, listed in {shown(self.dir / 'config.json')}", file=sys.stderr)
        if resumed and resumed["epoch"] not in self.logged_epochs:
            log_epoch_scalars(self.writer, resumed["metrics"], resumed["classes"], also=THE_TUTORIALS)
            self.writer.flush()
            append_metrics(self.metrics_file, resumed["metrics"])
        elif not resumed:
            log_graph_and_settings(self.writer, model, example, settings)

    @contextlib.contextmanager
    def saving(self, epoch, keep_epoch, is_best):
        """`with run.saving(...) as file: torch.save(checkpoint, file)`: last.pth, atomically; then the same file
        as tudui_epoch_EPOCH.pth (KEEP_EPOCH) and best.pth (IS_BEST)."""
        yield (buffer := io.BytesIO())
        last = self.ckpt_dir / "last.pth"
        atomic_write(buffer.getvalue(), last)
        for name in ([f"tudui_epoch_{epoch}.pth"] if keep_epoch else []) + (["best.pth"] if is_best else []):
            replace_with_link(last, self.ckpt_dir / name)

    def log_epoch(self, record, tested, classes):
        """The epoch's other scalars, its metrics.jsonl line, and its pictures (TESTED: train.test's result)."""
        log_epoch_scalars(self.writer, record, classes)
        append_metrics(self.metrics_file, record)
        self.painter.paint(self.test_images, self.test_labels, tested, classes, record["epoch"])

    def __exit__(self, kind, error, traceback):
        """Close the files, then release the locks even when closing fails (a full disk), so that a notebook's
        kernel can resume the run; an OSError is one line."""
        try:
            try:
                if self.painter is not None:
                    self.painter.close()
            finally:
                for opened in (self.writer, self.train_writer, self.metrics_file):
                    if opened is not None:
                        opened.close()
        except OSError as e:
            raise cannot_write(self.dir, e) from None
        finally:
            threading.excepthook = self.thread_hook
            for lock in self.locks:
                lock.release()
        if isinstance(error, OSError):
            raise cannot_write(self.dir, error) from None
        return False


def append_metrics(metrics_file, record):
    """One metrics.jsonl line. The epoch's checkpoints are already saved, so a failure loses only this line."""
    try:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    except OSError as e:
        raise cannot_write(metrics_file.name, e) from None


def truncate_metrics(path, last_epoch):
    """Drop metrics.jsonl's lines of epochs after LAST_EPOCH, and lines a crash tore; returns the epochs kept."""
    if not path.exists():
        return set()
    records = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    kept = [record for record in records
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= last_epoch]
    atomic_write("".join(json.dumps(record) + "\n" for record in kept).encode(), path)
    return {record["epoch"] for record in kept}


def training_checkpoint(model, optimizer, scheduler, settings, data, record, best_accuracy, device, made_by):
    """What train.py saves each epoch: a plain dict of what a resumed run needs; RECORD, the epoch's metrics."""
    weights = model.state_dict()
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)

    def plain_numbers(state):  # 0-dim tensors (a CUDA graph's lrs) as numbers
        if isinstance(state, dict):
            return {key: plain_numbers(value) for key, value in state.items()}
        if isinstance(state, (list, tuple)):
            return type(state)(plain_numbers(value) for value in state)
        return float(state) if torch.is_tensor(state) and state.dim() == 0 else state
    return {"format": CHECKPOINT_FORMAT, "model": weights, "weights_sha256": weights_checksum(weights),
            "optimizer": optimizer_state(optimizer), "optimizer_class": type(optimizer).__name__,
            "scheduler": plain_numbers(scheduler.state_dict()), "scheduler_class": type(scheduler).__name__,
            "epoch": record["epoch"], "step": record["step"], "config": plain(settings), "classes": data.classes,
            "network": str(model), "preprocess": data.preprocess, "test_accuracy": record["test_accuracy"],
            "test_loss": record["test_loss"], "best_accuracy": best_accuracy, "metrics": record, "rng": rng,
            "provenance": made_by}


def optimizer_state(optimizer):
    """state_dict(), its lr a number (a CUDA graph's is a tensor) and not fused: it resumes on any device."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"], group["fused"] = float(group["lr"]), None
    return state


def restore(checkpoint, path, model, optimizer, scheduler, device, classes, steps_per_epoch):
    """A training CHECKPOINT's weights and optimizer, scheduler and RNG state put into this run's (a LambdaLR is
    put at the first step left with this run's base lrs). Returns the input normalization the weights
    learned, the first epoch left to train, its step and the best accuracy."""
    if checkpoint["classes"] != classes:
        raise SettingsError(f"{path} was trained on classes {checkpoint['classes']}, but this dataset has "
                            f"{classes}; resume with the same --dataset and --data-dir")
    load_weights(model, unwrapped(checkpoint["model"]), path, checkpoint.get("network"))
    for what, built in (("optimizer", optimizer), ("scheduler", scheduler)):
        saved = checkpoint.get(f"{what}_class", type(built).__name__)  # older checkpoints record none
        if saved != type(built).__name__:
            raise SettingsError(f"{path} was trained with the {what} {shown(saved)}, but train.py now builds "
                                f"{type(built).__name__}, which its saved state does not fit; build {shown(saved)} "
                                f"in train.py to resume, or start a new run")
    try:
        load_optimizer_state(optimizer, checkpoint["optimizer"])
        base_lrs, first_step = list(scheduler.base_lrs), (checkpoint["epoch"] + 1) * steps_per_epoch
        if checkpoint.get("scheduler") is not None:  # None: saved before schedulers were
            scheduler.load_state_dict(checkpoint["scheduler"])
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # --schedule's: a function of the step, so
            scheduler.base_lrs, scheduler.last_epoch = base_lrs, first_step  # this run's --lr, --epochs count
            for group, base_lr, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
                group["lr"] = base_lr * factor(first_step)
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError.damaged(path, f"its optimizer or RNG state does not load: {e}") from None
    return (checked_preprocess(checkpoint.get("preprocess"), path), checkpoint["epoch"] + 1, checkpoint["step"],
            checkpoint["best_accuracy"])


def load_optimizer_state(optimizer, state):
    """Momentum buffers and the lr from a checkpoint; the other settings stay this run's flags'."""
    own = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
           for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, own):
        group.update(settings)
        for p in group["params"]:
            for name, value in optimizer.state[p].items():  # load_state_dict checks neither
                if torch.is_tensor(value) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"a {name} of shape {tuple(value.shape)} for a weight of {tuple(p.shape)}")
                if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                    raise ValueError(f"a {name} holds NaN or infinity")


def epoch_files(ckpt_dir):
    """CKPT_DIR's tudui_epoch_N.pth files as [(N, path)], the latest first."""
    return sorted(((int(p.stem.rpartition("_")[2]), p) for p in Path(ckpt_dir).glob("tudui_epoch_*.pth")
                   if p.stem.rpartition("_")[2].isdigit()), reverse=True)


def resumable_checkpoint(ckpt_dir):
    """The checkpoint to resume CKPT_DIR's run from: last.pth, else the latest epoch's, else best.pth; or None."""
    candidates = [Path(ckpt_dir) / "last.pth", *(p for _, p in epoch_files(ckpt_dir)), Path(ckpt_dir) / "best.pth"]
    return next((path for path in candidates if path.exists()), None)


def auto_resume(given):
    """--resume auto: the --run-name run's last.pth, else its newest epoch file that loads; None when it has
    none yet, so that it starts. The same command goes on after a preemption."""
    if given.get("run_name") is None:
        raise SettingsError("--resume auto needs --run-name: the run it goes on with, or starts when it has none")
    ckpt_dir = Path(given.get("ckpt_dir") or Path(given.get("logdir", FIELDS["logdir"].default)) / given["run_name"])
    problems = []
    for path in [ckpt_dir / "last.pth", *(p for _, p in epoch_files(ckpt_dir))]:
        if path.is_file():
            try:
                load_training_checkpoint(path)
                return str(path)
            except CheckpointError as e:
                problems.append(str(e))
    if problems:
        raise CheckpointError(f"--resume auto found no whole checkpoint in {ckpt_dir}: {problems[0]}")
    return None


def refuse_to_overwrite(ckpt_dir, resumed=None, resume=None):
    """A new run never writes over an earlier one's checkpoints; one resumed from RESUME in CKPT_DIR does not
    when the folder holds a later epoch than RESUMED's: it must branch."""
    if resume and Path(resume).resolve().parent == Path(ckpt_dir).resolve():
        last, saved = Path(ckpt_dir) / "last.pth", epoch_files(ckpt_dir)
        if last.exists():
            try:
                saved.append((read_checkpoint(last).get("epoch"), last))
            except (CheckpointError, AttributeError):  # unreadable, or no dict: no epoch to compare
                pass
        newer = [(epoch, path == last, path) for epoch, path in saved
                 if isinstance(epoch, int) and epoch > resumed["epoch"]]
        if newer:
            epoch, _, path = max(newer)  # the latest epoch, and last.pth of files of equal epochs
            raise SettingsError(f"{resume} is epoch {resumed['epoch']}, but {path} is epoch {epoch}: resuming it "
                                f"there would overwrite the newer epochs; resume {path}, or branch into a run of "
                                f"its own: --resume {resume} --run-name NEW_NAME (and a new --ckpt-dir, if given)")
        return
    found = resumable_checkpoint(ckpt_dir)
    if found is not None:
        raise SettingsError(f"{ckpt_dir} already holds the checkpoints of an earlier run; continue it with "
                            f"--resume {found}, or give this run another --run-name (or --ckpt-dir)")
