"""Train the tutorial's Tudui network on CIFAR-10: the tutorial's routine, to be read top to bottom.

    python train.py                      # the tutorial's routine: 10 epochs, SGD lr 0.01, batch 64
    python train.py --recipe tuned       # same network, better recipe
    tensorboard --logdir logs_train      # and from Python: train.run(epochs=3, recipe="tuned")

Its sections are the tutorial's steps: 1. the datasets; 2. the model, loss, optimizer and lr scheduler;
3. the training step and the epoch loop; 4. the test; 5. the run, which trains, tests, logs to TensorBoard
and saves a checkpoint every epoch. Change them here: what this file builds is what trains. The
machinery they call (atomic saves, locks, checks, signals) lives beside it, in the tudui package.
"""
import contextlib
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.tensorboard import SummaryWriter
from torchvision.datasets import CIFAR10

from model import Tudui
from tudui import checks, distributed
from tudui.batches import TestBatches, TrainBatches, normalizer, on_device
from tudui.checkpoints import load_training_checkpoint, num_classes_argument
from tudui.console import StopOnSignal, exit_process, keep_the_resume_call, progress_bar, run_cli, say
from tudui.cuda_graph import GraphedStep, uses_cuda_graph
from tudui.datasets import ImageFolder, cifar10_errors, downloads
from tudui.devices import device_settings, keep_freed_memory
from tudui.errors import Interrupted
from tudui.muon import Muon, hidden_weights_apart
from tudui.report import TrainResult, epoch_line, per_class_accuracy, provenance
from tudui.runs import RunFolder, auto_resume, restore, resumable_checkpoint, training_checkpoint
from tudui.settings import as_command, check_keywords, command_line_settings, lr_schedule, resolve


# ------------------------------------------------------------------------------------------------------------- 1. data

def datasets(s):
    """The training and test sets, made as the tutorial makes them, with torchvision: CIFAR10 in --data-dir
    (downloaded when missing), or with --dataset folder, ImageFolder's DIR/train/<class>/* and
    DIR/test/<class>/* (tudui's ImageFolder: torchvision's, refusing in one line what a run cannot use).
    No transform: the images go to the device whole, and batches are cut there (tudui.batches)."""
    if s.dataset == "folder":
        train_set = ImageFolder(Path(s.data_dir) / "train")
        return train_set, ImageFolder(Path(s.data_dir) / "test", classes=train_set.classes)
    download = downloads(s.data_dir, s.no_download, s.dry_run)
    with cifar10_errors(s.data_dir, not s.no_download, s.dry_run):  # what is missing, and how to get it: one line
        return (CIFAR10(s.data_dir, train=True, download=download),
                CIFAR10(s.data_dir, train=False, download=download))


# Your own augmentation: a function of one training image, uint8 (3, 32, 32) on the run's device, before
# normalization, that draws from torch's random generators (TrainBatches seeds them from --seed, the epoch
# and the step, so a resumed run draws what it drew). It is called on each image on its own: a
# torchvision.transforms.v2 transform called on a whole batch draws once for all of its images. E.g.
#     from torchvision.transforms import v2
#     train_transform = v2.Compose([v2.RandomHorizontalFlip(), v2.ColorJitter(brightness=0.2, contrast=0.2)])
train_transform = None


# ------------------------------------------------------------------------------- 2. model, loss, optimizer, scheduler

def build_model(num_classes, device, seed):
    torch.manual_seed(seed)  # the initial weights
    model = Tudui(*num_classes_argument(Tudui, num_classes))  # Tudui(num_classes), or Tudui() as the tutorial's
    return model.to(device, memory_format=torch.channels_last)


def build_optimizer(model, s):
    """SGD, or Muon for the hidden layers' weights (--optimizer muon) with SGD for the rest."""
    if s.optimizer == "muon":
        return Muon(hidden_weights_apart(model), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                    weight_decay=s.weight_decay, muon_decay=s.muon_decay)
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                           weight_decay=s.weight_decay)


def build_scheduler(optimizer, s, steps_per_epoch):
    """The lr of every step: --schedule after --warmup, as a factor of the optimizer's lr. It is stepped
    after every optimizer step, so a scheduler built here instead (StepLR, OneCycleLR ...) counts steps:
    steps_per_epoch of them to an epoch."""
    return LambdaLR(optimizer, lr_schedule(s, total_steps=steps_per_epoch * s.epochs))


# --------------------------------------------------------------------------------------------------------- 3. training

def make_train_step(model, loss_fn, optimizer, amp):
    def train_step(imgs, targets, scale):
        # autocast's cast cache is off: each step casts the weights afresh (a CUDA graph replays them)
        with torch.autocast(imgs.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            outputs = model(imgs)                               # forward
            loss = loss_fn(outputs.float(), targets)            # loss: the batch's sum
        optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()                               # backward, of the mean over the batch
        optimizer.step()                                        # optimizer step
        return loss.detach(), (outputs.argmax(1) == targets).sum()
    return train_step


def train_one_epoch(model, train_loader, train_step, optimizer, scheduler, first_step, s, log, stop):
    """One pass over TRAIN_LOADER, whose first step is FIRST_STEP of the run, showing (LOG) the train loss every
    --log-every steps: the one host sync inside the epoch. Returns each step's mean loss and lr, and the
    accuracy. Raises Interrupted once a stop was asked for (Ctrl-C, SIGTERM): the partial epoch is discarded."""
    device, world, batch_sizes = train_loader.labels.device, train_loader.world, train_loader.batch_sizes()
    loss_sums = torch.zeros(len(batch_sizes), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    lrs = []
    model.train()
    for i, (imgs, targets, scale) in enumerate(progress_bar(f"epoch {train_loader.epoch}", not s.quiet)(train_loader)):
        lr = optimizer.param_groups[0]["lr"]  # a device tensor under a CUDA graph: copied, not read, here
        lrs.append(lr.clone() if torch.is_tensor(lr) else lr)
        loss_sums[i], batch_correct = train_step(imgs, targets, scale)
        scheduler.step()
        correct += batch_correct
        step = first_step + i + 1  # the tutorial counts steps from 1 and logs when the count hits a multiple
        if step % s.log_every == 0:
            loss = loss_sums[i].clone()
            world.sum(loss)
            log(step, (loss / batch_sizes[i]).item(), float(lrs[-1]))
        if world.agree_to_stop(stop, device, synced=step % s.log_every == 0 or i == len(batch_sizes) - 1):
            raise stop.interrupted()  # under torchrun, every rank after the same step
    world.sum(loss_sums, correct)
    return (loss_sums.cpu() / torch.tensor(batch_sizes), correct.item() / len(train_loader.labels),
            [float(lr) for lr in lrs])


# ------------------------------------------------------------------------------------------------------------- 4. test

@torch.no_grad()
def test(model, test_loader, num_classes, amp=False):
    """Under model.eval() and torch.no_grad() as in the tutorial: mean per-sample loss, accuracy, confusion
    matrix (rows: true class) and each image's predicted class and probability; per rank under torchrun."""
    device = test_loader.labels.device
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    predictions = [(torch.zeros(0, device=device), test_loader.labels[:0])]  # (probability, class) of each image
    was_training = model.training
    model.eval()
    for imgs, targets in test_loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(imgs).float()
        total_loss += loss_fn(outputs, targets)
        predictions.append(outputs.softmax(1).max(1))
    model.train(was_training)
    confidence, predicted = (torch.cat(column) for column in zip(*predictions))
    confusion = torch.bincount(test_loader.labels * num_classes + predicted, minlength=num_classes ** 2)
    test_loader.world.sum(total_loss, confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = max(1, test_loader.total)
    return {"loss": total_loss.item() / n, "accuracy": confusion.trace().item() / n, "confusion": confusion,
            "predicted": predicted, "confidence": confidence}


# ---------------------------------------------------------------------------------------------------------- 5. the run

def train(s, resumed, device, world, command, same_command_resumes=False):
    """The run: data, model, loss, optimizer and scheduler (from RESUMED's checkpoint when resuming), then
    each epoch trained, tested, saved and logged. COMMAND(**changes) says how the user starts this run, or
    one with CHANGES (SAME_COMMAND_RESUMES: with --resume auto, it goes on as it is). Returns a TrainResult;
    with --dry-run, checks instead (checks.dry_run)."""
    data = on_device(*datasets(s), s, device)                                                # 1. data
    model = build_model(len(data.classes), device, s.seed)                                   # 2. model,
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=s.label_smoothing)        #    loss,
    optimizer = build_optimizer(model, s)                                                    #    optimizer,
    steps_per_epoch = -(-len(data.train_y) // s.batch_size)
    scheduler = build_scheduler(optimizer, s, steps_per_epoch)                               #    lr scheduler
    start_epoch, step, best_accuracy = 0, 0, -1.0
    if resumed:  # the weights, optimizer, scheduler and RNG state, and the normalization the weights learned
        data.preprocess, start_epoch, step, best_accuracy = restore(resumed, s.resume, model, optimizer, scheduler,
                                                                    device, data.classes, steps_per_epoch)
    norm = normalizer(data.preprocess, device)
    train_loader = TrainBatches(data.train_x, data.train_y, s.batch_size, norm, s, world, train_transform)
    test_loader = TestBatches(data.test_x, data.test_y, norm, world)
    train_step = make_train_step(world.wrap(model, device), loss_fn, optimizer, s.amp)
    if uses_cuda_graph(s, device, world):
        train_step = GraphedStep(train_step, optimizer, s.batch_size, device)
    if s.dry_run:  # a few steps and one test batch of the code below, writing nothing
        train_loader.set_epoch(start_epoch)
        return checks.dry_run(s, data, device, resumed, train_step, start_epoch, command(dry_run=None),
                              lambda n: train_one_epoch(model, train_loader.first_steps(n), train_step, optimizer,
                                                        scheduler, 0, s, lambda *_: None, StopOnSignal())[0],
                              lambda: test(model, test_loader.first_batch(), len(data.classes), s.amp))
    if start_epoch >= s.epochs and world.rank == 0:
        checks.say_nothing_to_train(s, start_epoch)
    made_by = provenance(device, command())
    run = RunFolder(s, resumed, start_epoch, step, data.skipped) if world.rank == 0 else None  # only rank 0 writes
    record, epoch = (resumed["metrics"] if resumed else {}), start_epoch
    try:  # once a stop is under way, more signals wait for the files to close (StopOnSignal)
        with StopOnSignal(world.rank == 0, at_once=world.size == 1) as stop, run or contextlib.nullcontext():
            writer = SummaryWriter(run.dir, purge_step=step + 1 if resumed else None) if run else None
            if run:
                run.started(writer, model, s, resumed, next(iter(test_loader))[0][:1], device, world, data,
                            optimizer, scheduler)

            def log(step, loss, lr):
                say(s.quiet, f"step {step}, loss {loss:.4f}")
                if writer:
                    writer.add_scalar("train_loss", loss, step)
                    writer.add_scalar("lr", lr, step)
            for epoch in range(start_epoch, s.epochs):
                started, started_at = time.perf_counter(), time.time()
                train_loader.set_epoch(epoch)
                # the log counts epochs of this batch size, not the checkpoint's step: a run resumed with
                # another --batch-size would otherwise jump elsewhere in it
                losses, train_accuracy, lrs = train_one_epoch(model, train_loader, train_step, optimizer,  # 3. train
                                                              scheduler, epoch * len(train_loader), s, log, stop)
                train_seconds = time.perf_counter() - started
                result = test(model, test_loader, len(data.classes), s.amp)                   # 4. test
                checks.stop_if_not_finite(losses, result["loss"], step, epoch, s)
                record = {"epoch": epoch, "step": step + len(losses), "started_at": started_at,
                          "train_loss_mean": losses.double().mean().item(), "train_accuracy": train_accuracy,
                          "test_loss": result["loss"], "test_accuracy": result["accuracy"], "lr": lrs[-1],
                          "per_class_accuracy": per_class_accuracy(result["confusion"]),
                          "epoch_seconds": time.perf_counter() - started, "train_seconds": train_seconds,
                          "images_per_s": len(data.train_y) / train_seconds}
                if s.val_split:  # best.pth is then chosen on these, not on the test set it is scored on
                    val = test(model, TestBatches(data.val_x, data.val_y, norm, world), len(data.classes), s.amp)
                    record |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
                chosen_by = record["val_accuracy" if s.val_split else "test_accuracy"]
                is_best, best_accuracy = chosen_by > best_accuracy, max(best_accuracy, chosen_by)
                if run:                                                                      # 5. save and log
                    checkpoint = training_checkpoint(model, optimizer, scheduler, s, data, record, best_accuracy,
                                                     device, made_by)
                    keep_epoch = (epoch + 1) % s.save_every == 0 or epoch == s.epochs - 1
                    with run.saving(epoch, keep_epoch, is_best) as file:  # last.pth; tudui_epoch_{epoch}.pth, best.pth
                        torch.save(checkpoint, file)
                    run.log_epoch(record, result, data.classes)  # the other curves, pictures, metrics.jsonl
                    writer.add_scalar("test_loss", result["loss"], epoch)
                    writer.add_scalar("test_accuracy", result["accuracy"], epoch)
                step = record["step"]
                say(s.quiet, epoch_line(record))
            if writer:
                writer.close()
    except Interrupted as stopped:  # the message says how to resume (rank 0's alone); its signal, the exit code
        last = resumable_checkpoint(run.ckpt_dir) if run else None
        how = (f"run the same command to go on: {command()}" if last and same_command_resumes else
               f"resume with: {command(resume=str(last), only=True)}" if last else "nothing saved yet")
        stopped.args = (f"interrupted in epoch {epoch}; its partial progress is discarded. {how}" if run else "",)
        stopped.resume_call = bool(run)
        raise
    return TrainResult.of(run, record, step, best_accuracy)


def start(given, from_command_line):
    """Train (or check) as the settings GIVEN say; the rest of main and run."""
    checkpoint = auto_resume(given) if given.get("resume") == "auto" else given.get("resume")
    resumed = load_training_checkpoint(checkpoint) if checkpoint else None
    s = resolve({**given, "resume": checkpoint}, resumed)
    with keep_the_resume_call(), distributed.start(s) as (world, device):
        if s.evaluate:
            return checks.evaluate_checkpoint(s, device, test)
        with device_settings(device, s.deterministic, s.quiet, s.amp):
            result = train(s, resumed, device, world, partial(as_command, given, from_command_line, world.size),
                           same_command_resumes=given.get("resume") == "auto")
    if s.quiet and world.rank == 0 and not s.dry_run:
        print(f"test accuracy {result.test_accuracy:.2%}, checkpoints in {result.ckpt_dir}")
    return result


def main(argv=None):
    """train.py's command line, ARGV (none: the defaults; only `python train.py` reads sys.argv). Returns a
    TrainResult (--evaluate: a report.Evaluation; --dry-run: None). Raises tudui.errors' TuduiError kinds
    with a one-line message, and Interrupted on Ctrl-C or a notebook's interrupt."""
    return start(command_line_settings(list(argv or [])), from_command_line=True)


def run(**settings):
    """train.py's flags as keywords, named as in Python: run(epochs=3, recipe="tuned", data_dir="data") is
    `python train.py --epochs 3 --recipe tuned --data-dir data`, through the same checks; main's result."""
    return start(check_keywords(settings), from_command_line=False)


if __name__ == "__main__":
    keep_freed_memory()  # faster CPU epochs (docs/speed.md); process-wide, so the command line only
    exit_process(run_cli(lambda: main(sys.argv[1:])))
