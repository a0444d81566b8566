"""Train the tutorial's Tudui network on CIFAR-10: the tutorial's routine, to be read top to bottom.

    python train.py                      # the tutorial's routine: 10 epochs, SGD lr 0.01, batch 64
    python train.py --recipe tuned       # same network, better recipe
    python train.py --resume logs_train/RUN/last.pth
    tensorboard --logdir logs_train

From Python or a notebook: `import train; result = train.run(epochs=3, recipe="tuned")`, the flags as
keywords, or `train.main(["--epochs", "3"])`. Either returns a result and raises the errors of errors.py.

Its sections are the tutorial's steps: 1. data; 2. model, loss and optimizer; 3. the training step and
the epoch loop; 4. the test after each epoch; 5. the run, which logs and saves every epoch. The machinery
they use lives beside it, in modules named for their jobs (README, Files).
"""
import math
import sys
import time

import torch
from torch import nn

from checkpoints import (CHECKPOINT_FORMAT, TUTORIAL_PREPROCESS, load_tudui, optimizer_state, provenance, restore,
                         rng_state)
from cli import StopOnCtrlC, progress_bar, run_cli, say
from config import command_line_call, keyword_argv, keyword_call, lr_at, parse_args, plain_config, python_call
from cuda_graph import GraphedStep
from data import (augment_batch, augment_plan, channel_stats, epoch_generator, load_dataset, load_test_split,
                  hold_out, normalizer, to_input)
from devices import deterministic_note, device_settings, keep_freed_memory, pick_device
from distributed import World, exit_process, join_torchrun, launched_world_size
from errors import Interrupted, SettingsError
from model import Tudui
from muon import Muon
from report import Evaluation, describe_checkpoint, format_report, per_class_accuracy
from runs import (RunRecorder, TrainResult, check_run_folders, grid_predictions, log_run_start, read_history,
                  resumable_checkpoint)

EVAL_BATCH_SIZE = 500  # evaluation needs no gradients, so bigger batches just mean fewer steps


# ------------------------------------------------------------------------------------------------------- 1. data

def prepare_data(args, device):
    """The datasets as tensors on DEVICE (one copy: every batch is then a slice of them), with --val-split
    images held out of the training set, the input normalization, and the buffers each epoch's
    augmentation plan is written into."""
    train_x, train_y, test_x, test_y, classes = load_dataset(args.dataset, args.data_dir, not args.no_download,
                                                             args.dry_run)
    data = {"test_x": test_x.to(device), "test_y": test_y.to(device), "classes": classes}
    if args.val_split:
        train_x, train_y, val_x, val_y = hold_out(train_x, train_y, args.val_split, args.seed)
        data["val_x"], data["val_y"] = val_x.to(device), val_y.to(device)
    data["preprocess"] = dict(TUTORIAL_PREPROCESS)
    if args.normalize:  # of the images trained on: the validation images are as unseen as the test set
        data["preprocess"]["mean"], data["preprocess"]["std"] = channel_stats(train_x)
    data["train_x"], data["train_y"] = train_x.to(device), train_y.to(device)
    if args.augment:
        data["flips"] = torch.zeros(len(train_y), dtype=torch.bool, device=device)
        data["shifts"] = torch.zeros(len(train_y), 2, dtype=torch.int64, device=device)
    return data


# ------------------------------------------------------------------------------------- 2. model, loss, optimizer

def build_model(num_classes, device, seed):
    torch.manual_seed(seed)
    return Tudui(num_classes).to(device, memory_format=torch.channels_last)


def build_optimizer(model, args, graphed=False):
    """SGD, or Muon for the hidden layers' weights (--optimizer muon). For a CUDA graph the lr is a device
    tensor, and SGD is the fused kernel that reads it: a graph replays the numbers it was captured with,
    so a changing lr must live in memory it reads."""
    lr = torch.tensor(args.lr, device=next(model.parameters()).device) if graphed else args.lr
    if args.optimizer == "muon":
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hidden = [layer.weight for layer in layers[:-1]]  # Muon is meant for hidden layers' weights
        rest = [p for p in model.parameters() if all(p is not weight for weight in hidden)]
        return Muon([{"params": hidden, "use_muon": True}, {"params": rest}], lr=lr, momentum=args.momentum,
                    nesterov=args.nesterov, weight_decay=args.weight_decay, muon_decay=args.muon_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, nesterov=args.nesterov,
                           weight_decay=args.weight_decay, fused=graphed or None)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a CUDA graph reads it there
        else:
            group["lr"] = lr


# --------------------------------------------------------------------------------------------------- 3. training

def train_step(model, optimizer, loss_fn, data, args, idx, scale):
    """One step on the training images at IDX: the batch, augmented and converted, then the tutorial's
    forward, loss, backward and optimizer step. The loss is the batch's sum, scaled by SCALE (1 / batch
    size in one process). Returns the summed loss and the correct count as device tensors."""
    batch = data["train_x"][idx]
    if args.augment:
        batch = augment_batch(batch, data["flips"][idx], data["shifts"][idx])
    x, y = to_input(batch, data["norm"]), data["train_y"][idx]
    # no autocast weight cache: a CUDA graph must not capture casts cached outside it
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp, cache_enabled=False):
        outputs = model(x)                                  # forward
        loss_sum = loss_fn(outputs.float(), y)              # loss
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * scale).backward()                           # backward
    optimizer.step()                                        # optimizer step
    return loss_sum.detach(), (outputs.argmax(1) == y).sum()


def make_step(model, optimizer, loss_fn, data, args, graphed):
    """train_step as a function of (idx, scale), replayed as a CUDA graph when GRAPHED."""
    def step(idx, scale):
        return train_step(model, optimizer, loss_fn, data, args, idx, scale)
    return GraphedStep(step, args.batch_size, data["train_y"].device) if graphed else step


def train_one_epoch(model, step, optimizer, data, epoch, first_step, total_steps, args, progress, stop,
                    world=World(), max_steps=None):
    """One pass over the training set in a seeded order (its first MAX_STEPS steps, with that limit);
    FIRST_STEP is where the epoch starts in the lr schedule of TOTAL_STEPS steps. Losses and correct
    counts stay on the device and are read once at the end: no host-device sync inside the epoch. Raises
    Interrupted when Ctrl-C was pressed; the partial epoch is then discarded.

    Under torchrun each rank takes its share of each global batch, and its summed loss is scaled by
    world size / global batch size, so DDP's gradient average is the single-process mean over the global
    batch, even for an uneven last batch."""
    device = data["train_y"].device
    n = len(data["train_y"])
    gen = epoch_generator(args.seed, epoch)
    order = torch.randperm(n, generator=gen).to(device, non_blocking=True)
    if args.augment:  # in place: a CUDA graph reads the plan where it was captured
        flips, shifts = augment_plan(n, gen, args.translate)
        data["flips"].copy_(flips)
        data["shifts"].copy_(shifts)
    steps = min(math.ceil(n / args.batch_size), max_steps or n)
    batch_sizes = [min(args.batch_size, n - i * args.batch_size) for i in range(steps)]
    loss_sums = torch.zeros(steps, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    lrs = []
    model.train()
    for i in range(steps):
        lrs.append(lr_at(first_step + i, total_steps, args))
        set_lr(optimizer, lrs[-1])
        idx = world.share_of_batch(order[i * args.batch_size:(i + 1) * args.batch_size])
        loss_sums[i], batch_correct = step(idx, world.size / batch_sizes[i])
        correct += batch_correct
        progress.update(1)
        if stop.requested:
            raise Interrupted
    world.sum(loss_sums, correct)
    return loss_sums.cpu() / torch.tensor(batch_sizes), correct.item() / n, lrs


# ------------------------------------------------------------------------------------------------------- 4. test

@torch.no_grad()
def test(model, images, labels, num_classes, preprocess, device, amp=False, tta=False, world=World()):
    """Mean per-sample loss, accuracy and confusion matrix (rows: true class, columns: predicted) of the
    IMAGES, under model.eval() and torch.no_grad() as in the tutorial. Under torchrun each rank scores its
    share."""
    n = len(labels)
    images, labels = images[world.share_of(n)], labels[world.share_of(n)]
    norm = normalizer(preprocess, device)
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        x = to_input(images[start:start + EVAL_BATCH_SIZE], norm)
        y = labels[start:start + EVAL_BATCH_SIZE]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
            if tta:
                logits = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)).div_(2).log_()
        total_loss += loss_fn(logits, y)
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    model.train()
    world.sum(total_loss, confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = max(1, n)
    return {"loss": total_loss.item() / n, "accuracy": confusion.trace().item() / n, "confusion": confusion}


# ---------------------------------------------------------------------------------------------------- 5. the run

def train(args, resumed, device, call, world=World()):
    """The run: data, model, loss and optimizer (from RESUMED's checkpoint when resuming), then each epoch
    trained, tested, saved and logged. Returns a TrainResult; with --dry-run, checks instead (dry_run)."""
    data = prepare_data(args, device)
    classes = data["classes"]
    model = build_model(len(classes), device, args.seed)
    graphed = args.cuda_graph and device.type == "cuda" and world.size == 1
    optimizer = build_optimizer(model, args, graphed)
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=args.label_smoothing)
    start_epoch, step, best_accuracy = 0, 0, -1.0
    if resumed:
        if resumed["classes"] != classes:
            raise SettingsError(f"{args.resume} was trained on classes {resumed['classes']}, but this dataset has "
                                f"{classes}; resume with the same --dataset and --data-dir")
        data["preprocess"] = restore(resumed, args.resume, model, optimizer, device)
        start_epoch, step, best_accuracy = resumed["epoch"] + 1, resumed["step"], resumed["best_accuracy"]
    data["norm"] = normalizer(data["preprocess"], device)
    train_step_fn = make_step(world.wrap(model, device), optimizer, loss_fn, data, args, graphed)
    steps_per_epoch = math.ceil(len(data["train_y"]) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    if args.dry_run:
        return dry_run(model, train_step_fn, optimizer, data, args, resumed, device, call, start_epoch, total_steps)
    made_by = provenance(device, call.text)

    if start_epoch >= args.epochs and world.rank == 0:
        print(f"nothing to train: {args.resume} has already trained {start_epoch} epoch{'s' * (start_epoch != 1)}, "
              f"and --epochs {args.epochs} is the total to reach; give a larger --epochs to train on", file=sys.stderr)
    recorder = RunRecorder(args, resumed, start_epoch, step) if world.rank == 0 else None
    record = resumed["metrics"] if resumed else {}
    try:
        if recorder and not resumed:
            log_run_start(recorder.writer, model, args, data)
        if recorder:
            say(args.quiet, f"run {recorder.run_dir} | checkpoints in {recorder.ckpt_dir} | device {device}"
                            f"{f' x {world.size} processes' if world.size > 1 else ''} | {len(data['train_y'])} "
                            f"train / {len(data['test_y'])} test images, {len(classes)} classes")
        with StopOnCtrlC() as stop:
            for epoch in range(start_epoch, args.epochs):
                started, started_at = time.perf_counter(), time.time()
                with progress_bar(steps_per_epoch, f"epoch {epoch}", not args.quiet) as progress:
                    # the schedule counts epochs of this batch size, not the checkpoint's step: a run
                    # resumed with another --batch-size would otherwise jump elsewhere in it
                    losses, train_accuracy, lrs = train_one_epoch(
                        model, train_step_fn, optimizer, data, epoch, epoch * steps_per_epoch, total_steps, args,
                        progress, stop, world)
                train_seconds = time.perf_counter() - started
                result = test(model, data["test_x"], data["test_y"], len(classes), data["preprocess"], device,
                              args.amp, world=world)
                stop_if_not_finite(losses, result["loss"], step, epoch, args)
                record = {
                    "epoch": epoch, "step": step + len(losses), "started_at": started_at,
                    "train_loss_mean": losses.double().mean().item(), "train_accuracy": train_accuracy,
                    "test_loss": result["loss"], "test_accuracy": result["accuracy"],
                    "per_class_accuracy": per_class_accuracy(result["confusion"]),
                    "lr": lrs[-1], "epoch_seconds": time.perf_counter() - started,
                    "train_seconds": train_seconds, "images_per_s": len(data["train_y"]) / train_seconds,
                }
                if args.val_split:  # best.pth is then chosen on these, not on the test set it is scored on
                    val = test(model, data["val_x"], data["val_y"], len(classes), data["preprocess"], device,
                               args.amp, world=world)
                    record |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
                chosen_by = record["val_accuracy" if args.val_split else "test_accuracy"]
                is_best = chosen_by > best_accuracy
                best_accuracy = max(best_accuracy, chosen_by)
                if recorder:  # save: a plain dict, which torch.load(path, weights_only=True) reads
                    recorder.epoch_done({
                        "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                        "optimizer": optimizer_state(optimizer), "epoch": epoch, "step": record["step"],
                        "config": plain_config(args), "classes": classes,
                        "preprocess": data["preprocess"], "test_accuracy": record["test_accuracy"],
                        "test_loss": record["test_loss"], "best_accuracy": best_accuracy, "metrics": record,
                        "rng": rng_state(device), "provenance": made_by,
                    }, is_best, losses, lrs, step, args, classes, result["confusion"], grid_predictions(model, data))
                step = record["step"]
                val_part = f"val accuracy {record['val_accuracy']:.2%}, " if args.val_split else ""
                say(args.quiet, f"epoch {epoch}: train loss {record['train_loss_mean']:.4f}, {val_part}"
                                f"test loss {record['test_loss']:.4f}, test accuracy {record['test_accuracy']:.2%}, "
                                f"{record['epoch_seconds']:.1f} s, {record['images_per_s']:.0f} images/s")
    except Interrupted:
        last = resumable_checkpoint(recorder.ckpt_dir) if recorder else None
        how = f"resume with: {call.resume(last)}" if last else "nothing saved yet"
        raise Interrupted(f"interrupted in epoch {epoch}; its partial progress is discarded. {how}") from None
    finally:
        if recorder:
            recorder.close()
    return TrainResult(run_dir=recorder and recorder.run_dir, ckpt_dir=recorder and recorder.ckpt_dir,
                       epoch=record.get("epoch"), step=step, test_loss=record.get("test_loss"),
                       test_accuracy=record.get("test_accuracy"), best_accuracy=best_accuracy,
                       history=read_history(recorder.run_dir / "metrics.jsonl") if recorder else {})


def stop_if_not_finite(losses, test_loss, step, epoch, args):
    """A diverged run stops before anything of its epoch is saved, so best.pth and last.pth stay good.
    Each step's loss is computed before its update, so weights that only the epoch's last step broke
    show up in the test loss alone."""
    finite = torch.isfinite(losses)
    if finite.all() and math.isfinite(test_loss):
        return
    what = (f"the training loss became non-finite at step {step + int((~finite).nonzero()[0]) + 1}"
            if not finite.all() else f"the weights became non-finite at step {step + len(losses)}, the last")
    raise SettingsError(f"{what} (epoch {epoch}); the learning rate is likely too high for this network "
                        f"(--lr {args.lr}): lower it. Checkpoints of earlier epochs are untouched")


def dry_run(model, step, optimizer, data, args, resumed, device, call, epoch, total_steps):
    """--dry-run: what the real run would fail on, in seconds, with nothing written: the data (found,
    readable, the class counts), the device, the run's folders, and a few training steps and one test
    batch through the real code path, a CUDA graph's capture and replay included where it applies."""
    classes, graphed = data["classes"], isinstance(step, GraphedStep)
    counts = torch.bincount(data["train_y"].cpu(), minlength=len(classes)).tolist()
    per_class = ", ".join(f"{name} {count}" for name, count in zip(classes, counts))
    held_out = f", {len(data['val_y'])} held out for validation" if args.val_split else ""
    say(args.quiet, f"data: {len(data['train_y'])} training images{held_out}, {len(data['test_y'])} test images in "
                    f"{args.data_dir}; training images per class: {per_class}")
    say(args.quiet, f"device: {device}{' (each full batch replayed as a CUDA graph)' if graphed else ''}")
    folders = sorted({str(folder) for folder in check_run_folders(args, resumed)})
    say(args.quiet, f"folders: {' and '.join(folders)} can be created and written")
    steps = GraphedStep.EAGER_WARMUP_STEPS + 2 if graphed else 2  # with a graph: warm-up, capture, one replay
    with progress_bar(steps, "dry run", False) as progress, StopOnCtrlC() as stop:
        first_step = epoch * math.ceil(len(data["train_y"]) / args.batch_size)
        losses, _, _ = train_one_epoch(model, step, optimizer, data, epoch, first_step, total_steps, args, progress,
                                       stop, max_steps=steps)
    batch = slice(0, EVAL_BATCH_SIZE)
    result = test(model, data["test_x"][batch], data["test_y"][batch], len(classes), data["preprocess"], device,
                  args.amp)
    stop_if_not_finite(losses, result["loss"], first_step, epoch, args)
    say(args.quiet, f"training: {len(losses)} step{'s' * (len(losses) != 1)} of up to {args.batch_size} images, "
                    f"loss {', '.join(f'{loss:.4f}' for loss in losses.tolist())}")
    say(args.quiet, f"test: one batch of {len(data['test_y'][batch])} images, loss {result['loss']:.4f}")
    print(f"everything is in place; start the run with: {call.real_run}")


def evaluate_only(args, device):
    net = load_tudui(args.evaluate, map_location="cpu").to(device, memory_format=torch.channels_last)
    images, labels, classes = load_test_split(args.dataset, args.data_dir, not args.no_download, net.classes)
    if len(classes) != len(net.classes):
        raise SettingsError(f"{args.evaluate} predicts {len(net.classes)} classes but the dataset has "
                            f"{len(classes)}; evaluate it on the dataset it was trained for")
    if classes != net.classes:  # scored all the same: folders named 0..9 are a common way to store CIFAR-10
        print(f"note: the test classes ({', '.join(classes)}) are not the class names of {args.evaluate} "
              f"({', '.join(net.classes)}); test class i in this order is scored as its class i", file=sys.stderr)
    result = test(net, images.to(device), labels.to(device), len(classes), net.preprocess, device, args.amp, args.tta)
    held_out = {}
    config = net.config or {}
    if config.get("val_split") and config.get("dataset") == args.dataset:  # drawn again from the run's seed
        *_, val_x, val_y = hold_out(*load_dataset(args.dataset, args.data_dir, not args.no_download)[:2],
                                    config["val_split"], config["seed"])
        val = test(net, val_x.to(device), val_y.to(device), len(classes), net.preprocess, device, args.amp, args.tta)
        held_out = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_images": len(val_y)}
    evaluation = Evaluation(result["loss"], result["accuracy"], result["confusion"], net.classes,
                            describe_checkpoint(args.evaluate, net.provenance), **held_out)
    print(format_report(evaluation))
    return evaluation


def main(argv=None, call=None):
    """Train as the flags in ARGV say and return a runs.TrainResult (with --evaluate, a report.Evaluation;
    with --dry-run, None). With no ARGV it uses the defaults: only `python train.py` reads sys.argv. Raises
    SettingsError, DataError or CheckpointError (errors.TuduiError) with a one-line message, and
    Interrupted on Ctrl-C or a notebook's interrupt; CALL says how the run was started."""
    argv = list(argv or [])
    call = call or python_call(argv)
    args, resumed = parse_args(argv)
    world, finished = World(), False
    try:
        if launched_world_size() > 1 and not args.evaluate:
            if args.dry_run:
                raise SettingsError("--dry-run checks one process; run it without torchrun, as python train.py")
            world, device = join_torchrun(args)
        else:
            keep_freed_memory()  # not under torchrun, where gloo's exit then aborted more often (docs/distributed.md)
            device = pick_device(args.device)
        if args.evaluate:
            return evaluate_only(args, device)
        if args.deterministic:
            say(args.quiet, deterministic_note(device))
        with device_settings(device, args.deterministic):
            result = train(args, resumed, device, call, world)
        finished = True
    finally:
        world.leave(finished)
    if args.quiet and world.rank == 0 and not args.dry_run:
        print(f"test accuracy {result.test_accuracy:.2%}, checkpoints in {result.ckpt_dir}")
    return result


def run(**settings):
    """train.py's flags as keywords, named as in Python: run(epochs=3, recipe="tuned", data_dir="data") is
    `python train.py --epochs 3 --recipe tuned --data-dir data`, through the same checks; main's result."""
    return main(keyword_argv(settings), keyword_call(settings))


if __name__ == "__main__":
    exit_process(run_cli(lambda: main(sys.argv[1:], command_line_call(sys.argv[1:]))))
