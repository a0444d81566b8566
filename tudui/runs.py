"""The run folder and everything written to it beside train.py's own lines: its name, its lock, the
checkpoint files train.py saves into, metrics.jsonl, config.json, TensorBoard's pictures and scalars
beyond the tutorial's, and the bookkeeping that lets a run resume where it stopped. Decides nothing
about training.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tudui.console import say, shown
from tudui.errors import SettingsError
from tudui.files import atomic_write, cannot_write, remove_stale_temporaries, replace_with_link
from tudui.pictures import GRID_IMAGES, confusion_figure, gallery, picked, prediction_grid
from tudui.settings import plain
from tudui.training_checkpoints import refuse_to_overwrite


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

    @classmethod
    def of(cls, run, record, step, best_accuracy):
        """The result of a run written to RUN, a RunFolder (None on the ranks that write nothing); RECORD is
        the last epoch's metrics."""
        return cls(run_dir=run and run.dir, ckpt_dir=run and run.ckpt_dir, epoch=record.get("epoch"), step=step,
                   test_loss=record.get("test_loss"), test_accuracy=record.get("test_accuracy"),
                   best_accuracy=best_accuracy, history=read_history(run.dir / "metrics.jsonl") if run else {})

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
    """An OS lock on a folder a run writes to (filelock's, flock on POSIX): a second run on the same
    folder is refused, and the lock dies with its process, so a killed run never blocks its own resume."""

    def __init__(self, folder, flag):
        from filelock import FileLock, Timeout

        self.lock = FileLock(Path(folder) / ".lock", thread_local=False)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise SettingsError(f"another run is writing to {folder}; wait for it to finish "
                                f"or pick another {flag}") from None

    def release(self):
        self.lock.release()


def append_metrics(metrics_file, record):
    """One metrics.jsonl line. The epoch's checkpoints are already saved, so a failure loses only this line."""
    try:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    except OSError as e:
        raise cannot_write(metrics_file.name, e) from None


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
    atomic_write("".join(json.dumps(record) + "\n" for record in kept).encode(), path)
    return {record["epoch"] for record in kept}


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


class RunFolder:
    """The folder a run writes to, as a with-block: its lock, metrics.jsonl, config.json (with
    --skip-bad-images, the SKIPPED_IMAGES too), the checkpoints train.py saves through saving(), and a
    SummaryWriter of its own for TensorBoard's pictures and the curves beyond train.py's (STEP: the resumed
    checkpoint's, after which its events are purged). Leaving the block, however it is left, waits for the
    last pictures, closes the files and both writers, and releases the lock; a full disk met inside it is
    one line (SettingsError). Under torchrun only rank 0 has one."""

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
        self.locks = [RunLock(self.dir, "--run-name")]
        if self.ckpt_dir.resolve() != self.dir.resolve():  # a shared --ckpt-dir needs its own lock
            try:
                self.locks.append(RunLock(self.ckpt_dir, "--ckpt-dir"))
            except SettingsError:
                self.locks[0].release()
                raise
        self.writer = self.train_writer = self.metrics_file = None
        self.painter, self.painting = ThreadPoolExecutor(1), None  # draws each epoch's pictures beside training
        # TensorBoard's writer thread hits a full disk first; the run reports it, as one line, at its next write
        self.thread_hook, threading.excepthook = threading.excepthook, self.quiet_disk_errors
        try:
            for folder in {self.dir, self.ckpt_dir}:
                remove_stale_temporaries(folder)
            refuse_to_overwrite(self.ckpt_dir, resumed, resumed and settings.resume)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.dir, purge_step=step + 1 if resumed else None, filename_suffix=".tudui")
            metrics_path = self.dir / "metrics.jsonl"
            self.logged_epochs = truncate_metrics(metrics_path, start_epoch - 1)
            self.metrics_file = open(metrics_path, "a")
            config = plain(settings) | ({"skipped_images": list(skipped_images)} if settings.skip_bad_images else {})
            atomic_write(json.dumps(config, indent=2).encode(), self.dir / "config.json")
        except BaseException as e:  # a full disk here must not leave the lock or files open (notebooks go on)
            self.__exit__(type(e), e, None)
            if isinstance(e, OSError):
                raise cannot_write(self.dir, e) from None
            raise

    def __enter__(self):
        return self

    def quiet_disk_errors(self, args):
        if not issubclass(args.exc_type, OSError):
            self.thread_hook(args)

    def started(self, writer, model, settings, resumed, example, device, world, data, optimizer, scheduler):
        """The run's first line: its folders, device, data, optimizer and lr scheduler. Then, on a resume
        killed between saving its checkpoint and logging its epoch, that epoch logged from the checkpoint;
        on a new run (not again on resume), the network graph, traced on EXAMPLE, and the settings in the
        HPARAMS tab, written into the run's own folder (add_hparams would make a stray extra run) and tied
        to its test (and validation) accuracy and loss curves."""
        from torch.utils.tensorboard.summary import hparams

        self.train_writer, self.test_images, self.test_labels = writer, data.test_x, data.test_y
        processes = f" x {world.size} processes" if world.size > 1 else ""
        say(settings.quiet, f"run {shown(self.dir)} | checkpoints in {shown(self.ckpt_dir)} | device {device}{processes} | "
                            f"{len(data.train_y)} train / {len(data.test_y)} test images, {len(data.classes)} classes | "
                            f"{type(optimizer).__name__}, lr {optimizer.param_groups[0]['lr']:.4g}, "
                            f"{type(scheduler).__name__}")
        if data.skipped:
            print(f"--skip-bad-images: skipped {len(data.skipped)} image{'s' * (len(data.skipped) != 1)} that cannot "
                  f"be read, listed in {shown(self.dir / 'config.json')}", file=sys.stderr)
        if resumed and resumed["epoch"] not in self.logged_epochs:
            log_epoch_scalars(self.writer, resumed["metrics"], resumed["classes"], also=THE_TUTORIALS)
            self.writer.flush()
            append_metrics(self.metrics_file, resumed["metrics"])
        if resumed:
            return
        with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns that it is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self.writer.add_graph(model, example)
        config = {k: ("none" if v is None else v) for k, v in plain(settings).items()
                  if isinstance(v, (int, float, str, bool)) or v is None}
        metrics = ["test_accuracy", "test_loss"] + (["val_accuracy", "val_loss"] if settings.val_split else [])
        for summary in hparams(config, dict.fromkeys(metrics, 0.0)):
            self.writer.file_writer.add_summary(summary)

    @contextlib.contextmanager
    def saving(self, epoch, keep_epoch, is_best):
        """`with run.saving(...) as file: torch.save(checkpoint, file)`: last.pth, switched over atomically
        once written whole (a crash or a full disk leaves the old one). Then tudui_epoch_EPOCH.pth when
        KEEP_EPOCH, and best.pth when IS_BEST, become the same file (hard links), switched over atomically
        too."""
        buffer = io.BytesIO()
        yield buffer
        last = self.ckpt_dir / "last.pth"
        atomic_write(buffer.getvalue(), last)
        for name in ([f"tudui_epoch_{epoch}.pth"] if keep_epoch else []) + (["best.pth"] if is_best else []):
            replace_with_link(last, self.ckpt_dir / name)

    def log_epoch(self, record, tested, classes):
        """The epoch's other scalars in TensorBoard, its metrics.jsonl line, and its pictures, drawn on the
        painter's thread. TESTED: train.test's result, whose predictions are of the first test images
        (rank 0's share)."""
        log_epoch_scalars(self.writer, record, classes)
        append_metrics(self.metrics_file, record)
        self.pictures_done()
        predictions = tested["predicted"], tested["confidence"]
        grid = tuple(t[:GRID_IMAGES].cpu() for t in (self.test_images, self.test_labels, tested["predicted"]))
        self.painting = self.painter.submit(self.draw_pictures, tested["confusion"], grid,
                                            picked(self.test_images, self.test_labels, *predictions), classes,
                                            record["epoch"])

    def draw_pictures(self, confusion, grid, mistakes, classes, epoch):
        """The epoch's confusion matrix, predictions and most confident mistakes in TensorBoard."""
        self.writer.add_figure("confusion_matrix", confusion_figure(confusion, classes, f"epoch {epoch}"), epoch,
                               close=False)
        self.writer.add_figure("test_predictions", prediction_grid(*grid, classes), epoch, close=False)
        self.writer.add_figure("test_mistakes", gallery(*mistakes, classes, f"epoch {epoch}: the test images most "
                                                        "confidently misclassified"), epoch, close=False)
        self.writer.flush()

    def pictures_done(self):
        """Wait for the pictures of the epoch before; a full disk they met raises here."""
        if self.painting is not None:
            painting, self.painting = self.painting, None
            painting.result()

    def __exit__(self, kind, error, traceback):
        """Close the files, then release the locks even when closing fails (a full disk), so that a
        notebook's kernel can resume the run. An OSError from the block or the closing is one line."""
        try:
            try:
                self.pictures_done()
            finally:
                self.painter.shutdown()
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



THE_TUTORIALS = ("test_loss", "test_accuracy")  # which train.py logs itself


def log_epoch_scalars(writer, record, classes, also=()):
    """An epoch's scalars beyond the tutorial's (and ALSO): validation, train loss and accuracy, speed, and
    each class's accuracy."""
    epoch = record["epoch"]
    for key in (*also, "val_loss", "val_accuracy", "train_loss_mean", "train_accuracy", "images_per_s",
                "epoch_seconds"):
        if key in record:  # checkpoints from older versions lack some
            writer.add_scalar(key, record[key], epoch)
    for name, acc in zip(classes, record.get("per_class_accuracy", [])):
        if acc is not None:
            writer.add_scalar(f"per_class_accuracy/{name}", acc, epoch)
