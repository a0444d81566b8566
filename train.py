"""Train the tutorial's Tudui network on CIFAR-10.

    python train.py                      # the tutorial's routine: 10 epochs, SGD lr 0.01, batch 64
    python train.py --recipe tuned       # same network, better recipe
    python train.py --resume logs_train/RUN/last.pth
    tensorboard --logdir logs_train

From Python: `from train import main; metrics = main(["--epochs", "1"])`.
"""
import argparse
import ctypes
import io
import itertools
import json
import math
import os
import platform
import signal
import sys
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from torch.optim.sgd import sgd as sgd_update  # torch.optim.SGD's step, as a function

from data import DataError, load_dataset, load_test_split
from model import (TUTORIAL_PREPROCESS, CheckpointError, Tudui, build_from_state_dict, checked_preprocess, load_tudui,
                   read_checkpoint)

try:
    import fcntl
except ModuleNotFoundError:  # Windows, which locks byte ranges of a file instead (RunLock)
    fcntl = None
    import msvcrt

# Settings that a recipe chooses. The tutorial's are the defaults; every one can be overridden by its flag.
RECIPES = {
    "tutorial": dict(optimizer="sgd", batch_size=64, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                     muon_decay=0.0, schedule="constant", warmup=0.0, augment=False, translate=2, normalize=False,
                     label_smoothing=0.0),
    "tuned": dict(optimizer="muon", batch_size=512, lr=0.08, momentum=0.9, nesterov=True, weight_decay=2e-3,
                  muon_decay=0.2, schedule="cosine", warmup=0.0, augment=True, translate=2, normalize=True,
                  label_smoothing=0.1),
}
EVAL_BATCH_SIZE = 500  # evaluation needs no gradients, so bigger batches just mean fewer steps
CHECKPOINT_FORMAT = "tudui-train-checkpoint/1"


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C: the run stopped cleanly between two steps."""


class StopOnCtrlC:
    """The first Ctrl-C asks the loop to stop after the current step; a second one exits at once.
    Only installed from the main thread (signal handlers cannot be set from others)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._exit_now)
        print("\nstopping after this step (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    @staticmethod
    def _exit_now(signum, frame):
        os._exit(130)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# ---------------------------------------------------------------------------------------------- configuration

class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as one line, like every other bad input, instead of the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' on every flag, except the recipe flags, whose help names each recipe's value."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser():
    p = OneLineErrorParser(prog="train.py", description="Train the tutorial's Tudui CNN on CIFAR-10.",
                           formatter_class=DefaultsHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="tutorial",
                   help="training recipe; the flags below marked 'recipe' override it")
    p.add_argument("--epochs", type=int, default=10, help="total epochs (with --resume: the total to reach)")
    p.add_argument("--optimizer", choices=["sgd", "muon"],
                   help="muon: Muon for the hidden layers' weights at lr x 0.25, SGD for the rest; "
                        "recipe: sgd (tutorial), muon (tuned)")
    p.add_argument("--batch-size", type=int, help="images per training step; recipe: 64 (tutorial), 512 (tuned)")
    p.add_argument("--lr", type=float, help="(peak) learning rate; recipe: 0.01 (tutorial), 0.08 (tuned)")
    p.add_argument("--momentum", type=float, help="recipe: 0 (tutorial), 0.9 (tuned)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="recipe: off (tutorial), on (tuned)")
    p.add_argument("--weight-decay", type=float, help="recipe: 0 (tutorial), 2e-3 (tuned)")
    p.add_argument("--muon-decay", type=float, metavar="R",
                   help="with --optimizer muon: decoupled weight decay on its hidden weights, each step scaling "
                        "them by 1 - Muon's lr x R; recipe: 0 (tutorial), 0.2 (tuned, 0 with --optimizer sgd)")
    p.add_argument("--schedule", choices=["constant", "cosine", "onecycle"],
                   help="learning-rate schedule, per step; onecycle warms up for 30%% of the steps, then "
                        "anneals (as torch's OneCycleLR); recipe: constant (tutorial), cosine (tuned)")
    p.add_argument("--warmup", type=float, help="fraction of steps spent warming the lr up from 0; recipe: 0")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random flips and shifts of each training batch; recipe: off (tutorial), on (tuned)")
    p.add_argument("--translate", type=int,
                   help="with --augment: largest shift in pixels; recipe: 2")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                   help="per-channel mean/std normalization; recipe: off (tutorial), on (tuned)")
    p.add_argument("--label-smoothing", type=float, help="recipe: 0 (tutorial), 0.1 (tuned)")
    p.add_argument("--dataset", choices=["cifar10", "folder"], default="cifar10",
                   help="cifar10: torchvision's CIFAR-10 in --data-dir; folder: DIR/train/<class>/*, DIR/test/<class>/*")
    p.add_argument("--data-dir", default="./data", help="where the dataset is (or is downloaded to)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--logdir", default="./logs_train", help="TensorBoard folder; each run gets LOGDIR/RUN_NAME")
    p.add_argument("--run-name", help="default: a timestamp, or the resumed run's name")
    p.add_argument("--ckpt-dir", help="default: the run's folder, LOGDIR/RUN_NAME")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by this script")
    p.add_argument("--evaluate", metavar="CHECKPOINT", help="only evaluate CHECKPOINT on the test split")
    p.add_argument("--tta", action="store_true", help="with --evaluate: average predictions over the image and its flip")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast: fast on GPUs and on CPUs with native bf16 (AVX-512 BF16), slow on others")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                   help="on one CUDA GPU, replay each training step as a recorded CUDA graph")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, data order and augmentation")
    p.add_argument("--log-every", type=int, default=100, help="log the train loss every N steps")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final line")
    return p


def parse_args(argv):
    """Flags, then the recipe's settings for any recipe flag not given. On --resume the checkpoint's
    configuration is the default instead, so a resumed run trains exactly as it began."""
    parser = build_parser()
    args = parser.parse_args(argv)
    resumed = None
    if args.resume:
        resumed = load_training_checkpoint(args.resume)
        saved = {"optimizer": "sgd", "muon_decay": 0.0, **resumed["config"]}  # what runs saved before those flags did
        parser.set_defaults(**saved_flags(parser, saved, args.resume))
        args = parser.parse_args(argv)
        refuse_changed_foundations(args, saved)
    if args.optimizer == "sgd" and args.muon_decay is None:
        args.muon_decay = 0.0  # the recipe's decay is for Muon's weights, which an SGD run does not have
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_args(args)
    return args, resumed


def saved_flags(parser, config, path):
    """A resumed run's saved configuration as flag defaults, each value checked against its flag's type
    and choices, so that a damaged one is refused here rather than failing somewhere in training."""
    machine_specific = {"device", "cuda_graph", "quiet", "resume", "evaluate", "tta"}
    actions = {action.dest: action for action in parser._actions}
    flags = {}
    for key, value in config.items():
        if key not in actions or key in machine_specific:
            continue
        if value is not None and not fits_flag(actions[key], value):
            raise damaged_checkpoint(path, f"its configuration has {key} = {value!r}")
        flags[key] = value
    return flags


def refuse_changed_foundations(args, saved):
    """A resumed run keeps its recipe (which would otherwise be named in config.json while the saved
    settings still applied), its optimizer (whose saved state is laid out for it) and its input
    normalization (the checkpoint's, which its weights learned)."""
    if "recipe" in saved and args.recipe != saved["recipe"]:
        raise UsageError(f"{args.resume} was trained with --recipe {saved['recipe']}, and a resumed run keeps its "
                         "recipe; flags such as --lr or --epochs still change single settings")
    if args.optimizer != saved["optimizer"]:
        raise UsageError(f"{args.resume} was trained with --optimizer {saved['optimizer']}, and a resumed run keeps "
                         "its optimizer, whose saved state only fits it")
    if "normalize" in saved and args.normalize != saved["normalize"]:
        raise UsageError(f"{args.resume} was trained {'with' if saved['normalize'] else 'without'} --normalize, and "
                         "a resumed run keeps the input normalization its weights learned")


def fits_flag(action, value):
    """Whether VALUE is one that ACTION's flag could have set."""
    if action.choices is not None:
        return value in action.choices
    if action.nargs == 0:  # on/off flags
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    kind = action.type or str
    return isinstance(value, (int, float) if kind is float else kind)


FLOAT32_MAX = torch.finfo(torch.float32).max  # the optimizer multiplies float32 weights by --lr and --weight-decay


def check_args(args):
    problems = [
        (args.epochs < 1, f"--epochs must be at least 1 (got {args.epochs})"),
        (args.batch_size < 1, f"--batch-size must be at least 1 (got {args.batch_size})"),
        (not 0 < args.lr <= FLOAT32_MAX, f"--lr must be a positive number up to {FLOAT32_MAX:.3g} (got {args.lr})"),
        (not 0 <= args.momentum < 1, f"--momentum must be in [0, 1) (got {args.momentum})"),
        (args.nesterov and args.momentum == 0, "--nesterov needs --momentum above 0"),
        (not 0 <= args.weight_decay <= FLOAT32_MAX,
         f"--weight-decay must be 0 or more, up to {FLOAT32_MAX:.3g} (got {args.weight_decay})"),
        (not 0 <= args.muon_decay <= FLOAT32_MAX,
         f"--muon-decay must be 0 or more, up to {FLOAT32_MAX:.3g} (got {args.muon_decay})"),
        (args.muon_decay > 0 and args.optimizer != "muon", "--muon-decay applies to --optimizer muon only"),
        (not 0 <= args.translate <= 16, f"--translate must be 0 to 16 pixels (got {args.translate})"),
        (not 0 <= args.warmup < 1, f"--warmup must be a fraction in [0, 1) (got {args.warmup})"),
        (not 0 <= args.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {args.label_smoothing})"),
        (not 0 <= args.seed < 2**32, f"--seed must be 0 to {2**32 - 1} (got {args.seed})"),
        (args.log_every < 1, f"--log-every must be at least 1 (got {args.log_every})"),
        (args.run_name is not None and not names_a_subfolder(args.run_name),
         f"--run-name must name a folder inside --logdir, such as exp1 (got {args.run_name!r})"),
        (args.tta and not args.evaluate, "--tta applies to --evaluate only"),
        (args.resume == "", "--resume needs a checkpoint path (got an empty one)"),
        (args.evaluate == "", "--evaluate needs a checkpoint path (got an empty one)"),
    ]
    for bad, message in problems:
        if bad:
            raise UsageError(message)


def names_a_subfolder(name):
    path = Path(name)  # no anchor: on Windows, C:run and \\run are not absolute, yet LOGDIR / them leaves LOGDIR
    return name.strip() not in ("", ".") and not path.anchor and ".." not in path.parts


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise UsageError(f"--device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- data

def channel_stats(images):
    """Per-channel mean and std of uint8 images, on the 0-1 scale ToTensor gives, from each channel's
    histogram of its 256 pixel values: exact, and without a float copy of the dataset."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in images.transpose(0, 1):
        counts = torch.bincount(channel.reshape(-1), minlength=256).double()
        pixels = counts.sum()
        mean = (counts * values).sum() / pixels
        means.append(mean.item())
        stds.append(((counts * (values - mean) ** 2).sum() / (pixels - 1)).sqrt().item())
    return means, stds


def normalizer(preprocess, device):
    """A checkpoint's preprocess dict as (mean, std) tensors on DEVICE, made once so that no step copies
    from the host; None when the input is plain x / 255."""
    if preprocess.get("mean") is None:
        return None
    return tuple(torch.tensor(preprocess[k], device=device).view(1, -1, 1, 1) for k in ("mean", "std"))


def to_input(images_u8, norm=None):
    """uint8 (B, 3, H, W) -> the network's float input: x / 255 (ToTensor), then (x - mean) / std if NORM."""
    x = images_u8.float().div_(255)
    if norm is not None:
        x = x.sub_(norm[0]).div_(norm[1])
    return x.contiguous(memory_format=torch.channels_last)


def epoch_generator(seed, epoch):
    """Each epoch's randomness (order, augmentation) depends only on (seed, epoch): resumed runs and every
    distributed rank draw exactly what an uninterrupted single process would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def augment_plan(n, generator, max_shift):
    """Per-image flip flags and (dy, dx) shifts in [-max_shift, max_shift] for one epoch."""
    flips = torch.rand(n, generator=generator) < 0.5
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    return flips, shifts


def augment_batch(images, flips, shifts):
    """Flip and translate a uint8 batch on its own device as tensor ops: each image is gathered through
    indices shifted by (dy, dx), and the strip uncovered at the edge mirrors the image (reflect padding,
    torchvision's padding_mode="reflect"), so no border of constant colour appears."""
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)
    b, c, h, w = images.shape
    rows = mirror(torch.arange(h, device=images.device) - shifts[:, 0:1], h).view(b, 1, h, 1)
    cols = mirror(torch.arange(w, device=images.device) - shifts[:, 1:2], w).view(b, 1, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chans = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return images[batch, chans, rows, cols]


def mirror(index, size):
    """Reflect out-of-range indices back into [0, size): -1 -> 1, size -> size - 2 (for shifts below size)."""
    return (size - 1) - ((size - 1) - index.abs()).abs()


# ---------------------------------------------------------------------------------------------- model and optimizer

def build_model(num_classes, device, seed):
    torch.manual_seed(seed)
    return Tudui(num_classes).to(device, memory_format=torch.channels_last)


def build_optimizer(model, args, graphed=False):
    """SGD, or Muon for the hidden layers (--optimizer muon). For a CUDA graph the lr is a device tensor,
    and SGD is the fused kernel that reads it: a graph replays the numbers it was captured with, so a
    changing lr must live in memory it reads."""
    lr = torch.tensor(args.lr, device=next(model.parameters()).device) if graphed else args.lr
    if args.optimizer == "muon":
        return Muon(model, lr=lr, momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
                    muon_decay=args.muon_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, nesterov=args.nesterov,
                           weight_decay=args.weight_decay, fused=graphed or None)


def orthogonalize(matrices, steps=5):
    """The nearest matrix with all singular values 1, roughly: those within a factor of 100 of the largest
    land in about 0.7 to 1.2, smaller ones are only raised toward it. Keller Jordan's quintic Newton-Schulz
    iteration, as Muon and torch.optim.Muon use it. MATRICES is one matrix or a batch (..., rows, columns)
    of them, each orthogonalized on its own."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrices.reshape(-1, *matrices.shape[-2:])
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)
    wide = x.size(1) <= x.size(2)
    x = x if wide else x.mT
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        # a x + (b gram + c gram gram) x, each product with its sum in one kernel (as torch.optim.Muon)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.mT).reshape(matrices.shape)


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan's) for the weights of the hidden layers, each conv's filters and the first
    Linear's as matrices of one row per output: their Nesterov momentum, orthogonalized, so that every
    direction of a layer moves at the same rate where SGD moves the few that dominate its gradient.
    torch.optim.Muon does this for 2-D weights only. The biases and the last layer keep SGD with the
    run's momentum and weight decay (Muon is meant for hidden layers' matrices). Muon's lr is the run's
    times LR_RATIO. Its steps have a fixed size whatever the gradient's, so its weights grow all run
    unless muon_decay shrinks them first (decoupled, as modded-nanogpt's Muon does), which lets their
    norm settle where the two balance."""

    LR_RATIO = 0.25  # the best of 0.125, 0.25, 0.5 and 1 (docs/experiments.md, Tuned recipe)
    MOMENTUM = 0.95  # Muon's usual

    def __init__(self, model, lr, momentum, nesterov, weight_decay, muon_decay=0.0):
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hidden = [layer.weight for layer in layers[:-1]]
        rest = [p for p in model.parameters() if all(p is not weight for weight in hidden)]
        super().__init__([{"params": hidden, "muon_decay": muon_decay}, {"params": rest}],
                         dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
        self.padded = self.step_scales = None  # made by the first step (padded_matrices)

    @torch.no_grad()
    def step(self):
        muon_group, sgd_group = self.param_groups  # as __init__ made them
        with_grads = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p in with_grads:
            if "momentum_buffer" not in self.state[p]:  # once: no allocation in the steps a CUDA graph records
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self._muon_step(muon_group)
        rest = [p for p in sgd_group["params"] if p.grad is not None]
        # torch's SGD; with a device-resident lr (a CUDA graph) its fused kernel, which reads it there
        sgd_update(rest, [p.grad for p in rest], [self.state[p]["momentum_buffer"] for p in rest],
                   fused=isinstance(sgd_group["lr"], torch.Tensor) or None, weight_decay=sgd_group["weight_decay"],
                   momentum=sgd_group["momentum"], lr=sgd_group["lr"], dampening=0.0, nesterov=sgd_group["nesterov"],
                   maximize=False)

    def _muon_step(self, group):
        lr = group["lr"] * self.LR_RATIO  # once per step: with a device-resident lr, each product is a kernel
        decay = group["muon_decay"]
        shrink = 1 - lr * decay if decay else None  # no extra kernels in the steps of runs without it
        if self.padded is None:  # once: no allocation in the steps a CUDA graph records
            self.padded, self.step_scales = padded_matrices(group["params"])
        stepped = [(p, i) for i, p in enumerate(group["params"]) if p.grad is not None]
        for p, i in stepped:
            if decay:
                p.mul_(shrink)
            buffer = self.state[p]["momentum_buffer"]
            buffer.mul_(self.MOMENTUM).add_(p.grad)
            torch.add(p.grad, buffer, alpha=self.MOMENTUM, out=as_weight(self.padded[i], p))  # Nesterov
        # every layer's matrix in one batch: on a GPU, a product of matrices this small takes about a
        # kernel's fixed cost whatever its size, and the batch runs each Newton-Schulz product once, not per layer
        directions = orthogonalize(self.padded).mul_(lr * self.step_scales)
        for p, i in stepped:
            p.sub_(as_weight(directions[i], p))


def padded_matrices(weights):
    """Zeros to hold each weight as a matrix of one row per output (transposed when it has more rows
    than columns), all padded to one size: the padding stays zero through Newton-Schulz and leaves each
    matrix's result what it is alone. Also each weight's step scale: a tall matrix's step is scaled up to
    a wide one's."""
    shapes = [(w.shape[0], w[0].numel()) for w in weights]
    rows, columns = max(min(shape) for shape in shapes), max(max(shape) for shape in shapes)
    padded = weights[0].new_zeros(len(weights), rows, columns)
    scales = torch.tensor([max(1, r / c) ** 0.5 for r, c in shapes], device=padded.device).view(-1, 1, 1)
    return padded, scales


def as_weight(matrix, weight):
    """The part of a padded MATRIX that holds WEIGHT (see padded_matrices), viewed in WEIGHT's shape."""
    rows, columns = weight.shape[0], weight[0].numel()
    part = matrix[:rows, :columns] if rows <= columns else matrix[:columns, :rows].mT
    return part.view(weight.shape)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def optimizer_state(optimizer):
    """state_dict() with a plain-number lr, so checkpoints stay portable between graphed and plain runs."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"] = float(group["lr"])
        group["fused"] = None
    return state


def load_optimizer_state(optimizer, state):
    """Momentum buffers from a checkpoint. The settings stay this run's own (load_state_dict would put
    the checkpoint's back): they are the checkpoint's unless a flag such as --weight-decay changed them."""
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, own):
        group.update(settings)


def lr_at(step, total_steps, args):
    """The learning rate for a 0-based step: a pure function of the step, so resuming needs no scheduler state."""
    warmup = int(args.warmup * total_steps)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if args.schedule == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if args.schedule == "onecycle":  # torch.optim.lr_scheduler.OneCycleLR's defaults, cosine both ways
        start, end = args.lr / 25, args.lr / 25 / 1e4
        if progress < 0.3:
            return start + (args.lr - start) * (1 - math.cos(math.pi * progress / 0.3)) / 2
        return end + (args.lr - end) * (1 + math.cos(math.pi * (progress - 0.3) / 0.7)) / 2
    return args.lr


# ---------------------------------------------------------------------------------------------- train and test

class TrainStep:
    """One SGD step on the training images at IDX: gather, augment, convert, forward, loss, backward,
    update. Returns the batch's summed loss and correct count as device tensors (read them before the
    next call: with a graph they are reused).

    With GRAPHED (one CUDA GPU), full batches run as a CUDA graph: the step's ~60 kernels are recorded
    once and replayed with a single launch. Tudui is so small that launching kernels, not running them,
    bounds an eager GPU step, so this is where most of the GPU speed comes from. The graph replays the
    kernels of this same code on the same tensors, so it computes the same updates (its SGD is the fused
    kernel, equal to the plain one within float rounding). What changes between steps lives in tensors
    the graph reads: the batch's indices, the lr and the epoch's augmentation plan. The last, smaller
    batch of an epoch runs eagerly."""

    EAGER_WARMUP_STEPS = 3  # before capture: cuDNN picks its algorithms and the momentum buffers exist

    def __init__(self, model, optimizer, loss_fn, data, args, graphed, world=1):
        self.model, self.optimizer, self.loss_fn, self.args, self.world = model, optimizer, loss_fn, args, world
        self.images, self.labels, self.norm = data["train_x"], data["train_y"], data["norm"]
        n, device = len(self.labels), self.labels.device
        if args.augment:  # filled each epoch in place: a graph reads them at fixed addresses
            self.flips = torch.zeros(n, dtype=torch.bool, device=device)
            self.shifts = torch.zeros(n, 2, dtype=torch.int64, device=device)
        self.graphed = graphed
        self.graph = None
        self.warmup_left = self.EAGER_WARMUP_STEPS
        if graphed:
            self.static_idx = torch.zeros(args.batch_size, dtype=torch.int64, device=device)

    def set_augmentation(self, flips, shifts):
        self.flips.copy_(flips)
        self.shifts.copy_(shifts)

    def _step(self, idx, scale):
        batch = self.images[idx]
        if self.args.augment:
            batch = augment_batch(batch, self.flips[idx], self.shifts[idx])
        x, y = to_input(batch, self.norm), self.labels[idx]
        # no autocast weight cache: a graph must not capture casts cached outside it
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.args.amp, cache_enabled=False):
            outputs = self.model(x)
            loss_sum = self.loss_fn(outputs.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum * scale).backward()
        self.optimizer.step()
        return loss_sum.detach(), (outputs.argmax(1) == y).sum()

    def __call__(self, idx, global_batch_size, lr):
        set_lr(self.optimizer, lr)
        scale = self.world / global_batch_size
        if not self.graphed or len(idx) != self.args.batch_size:
            return self._step(idx, scale)
        self.static_idx.copy_(idx)
        if self.graph is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self._eager_on_side_stream(scale)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_result = self._step(self.static_idx, scale)
        self.graph.replay()  # capture only records: this replay is the step itself
        return self.static_result

    def _eager_on_side_stream(self, scale):
        """Warm-up steps before a capture run on a side stream, as torch.cuda.graph's documentation asks."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = self._step(self.static_idx, scale)
        torch.cuda.current_stream().wait_stream(side)
        return result


def train_one_epoch(step_fn, data, epoch, schedule_step, total_steps, args, device, progress, stop, rank=0, world=1):
    """One pass over the training set in a seeded order. Losses and correct counts stay on the device
    and are read once at the end: no host-device sync inside the epoch. Raises Interrupted when
    Ctrl-C was pressed; the partial epoch is then discarded. SCHEDULE_STEP is where the epoch starts in
    the lr schedule of TOTAL_STEPS steps.

    Under torchrun every rank draws the same order and takes its slice of each global batch. Each rank's
    summed loss is scaled by world / global batch size, so DDP's gradient average equals the single-process
    mean over the global batch, even for an uneven last batch."""
    n = len(data["train_y"])
    gen = epoch_generator(args.seed, epoch)
    order = torch.randperm(n, generator=gen).to(device, non_blocking=True)
    if args.augment:
        step_fn.set_augmentation(*augment_plan(n, gen, args.translate))
    steps = math.ceil(n / args.batch_size)
    batch_sizes = [min(args.batch_size, n - i * args.batch_size) for i in range(steps)]
    loss_sums = torch.zeros(steps, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    lrs = []
    step_fn.model.train()
    for i in range(steps):
        idx = order[i * args.batch_size:(i + 1) * args.batch_size].tensor_split(world)[rank]
        lrs.append(lr_at(schedule_step + i, total_steps, args))
        loss_sums[i], batch_correct = step_fn(idx, batch_sizes[i], lrs[-1])
        correct += batch_correct
        progress.update(1)
        if stop.requested:
            raise Interrupted
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(loss_sums)
        dist.all_reduce(correct)
    return loss_sums.cpu() / torch.tensor(batch_sizes), correct.item() / n, lrs


@torch.no_grad()
def test(model, images, labels, num_classes, preprocess, device, amp=False, tta=False, rank=0, world=1):
    """Mean per-sample loss, accuracy and confusion matrix (rows: true class, columns: predicted).
    Under torchrun each rank scores its share of the test set and the sums are all-reduced."""
    n = len(labels)
    share = slice(rank * n // world, (rank + 1) * n // world)
    images, labels = images[share], labels[share]
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
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(total_loss)
        dist.all_reduce(confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = max(1, n)
    return {"test_loss": total_loss.item() / n, "test_accuracy": confusion.trace().item() / n,
            "confusion": confusion}


# ---------------------------------------------------------------------------------------------- checkpoints

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
    return UsageError(f"cannot write {path} ({error.strerror or error}); free some space or choose another "
                      "--logdir/--ckpt-dir; the files already there are intact")


def save_checkpoints(state, ckpt_dir, epoch, is_best):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for name in [f"tudui_epoch_{epoch}.pth", "last.pth"] + (["best.pth"] if is_best else []):
        write_run_file(buffer.getvalue(), Path(ckpt_dir) / name)


def load_training_checkpoint(path):
    obj = read_checkpoint(path)
    if not (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path} is not a training checkpoint written by train.py (it lacks the optimizer "
                              "state, epoch and settings to continue from), so it cannot be resumed; --evaluate "
                              "and predict.py take it as it is")
    damaged = damaged_fields(obj)
    if damaged:
        raise damaged_checkpoint(path, f"{', '.join(damaged)} missing or malformed")
    return obj


def damaged_fields(checkpoint):
    """The fields of a train.py checkpoint that resuming relies on and that are missing or malformed."""
    def count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    checks = {
        "model": lambda v: isinstance(v, dict),
        "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list),
        "epoch": count,
        "step": count,
        "config": lambda v: isinstance(v, dict),
        "classes": lambda v: isinstance(v, list) and all(isinstance(name, str) for name in v),
        "best_accuracy": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "metrics": lambda v: isinstance(v, dict) and v.get("epoch") == checkpoint.get("epoch"),
        "rng": lambda v: isinstance(v, dict) and torch.is_tensor(v.get("torch")),
    }
    return [name for name, fine in checks.items() if not fine(checkpoint.get(name))]


def damaged_checkpoint(path, what):
    return CheckpointError(f"{path} is a damaged training checkpoint ({what}), so it cannot be resumed; resume "
                           "from another of the run's checkpoints (last.pth, best.pth or an epoch file)")


def rng_state(device):
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def plain_config(args):
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ---------------------------------------------------------------------------------------------- logging

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
            raise UsageError(f"another run is writing to {folder}; wait for it to finish "
                             f"or pick another {flag}") from None

    def release(self):
        if not fcntl:  # closing would release it too, but Windows may take a while to
            self.file.seek(0)
            msvcrt.locking(self.file.fileno(), msvcrt.LK_UNLCK, 1)
        self.file.close()


class Progress:
    """A tqdm bar per epoch on a terminal; nothing otherwise."""

    def __init__(self, total, epoch, enabled):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f"epoch {epoch}", leave=False, unit="step")

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def say(args, *parts):
    if not args.quiet:
        print(*parts, flush=True)


def log_run_start(writer, model, args, data, device):
    """Once per run (not again on resume): the network graph, and the configuration in the HPARAMS tab,
    written into the run's own folder (add_hparams would make a stray extra run) and tied to its
    test_accuracy and test_loss curves."""
    from torch.utils.tensorboard.summary import hparams

    example = to_input(data["test_x"][:1], data["norm"])
    with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns that it is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        writer.add_graph(model, example)
    config = {k: ("none" if v is None else v) for k, v in plain_config(args).items()
              if isinstance(v, (int, float, str, bool)) or v is None}
    for summary in hparams(config, {"test_accuracy": 0.0, "test_loss": 0.0}):
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
    from report import confusion_image, prediction_grid

    for i in range(len(losses)):
        step = start_step + i + 1  # the tutorial counts steps from 1 and logs when the count hits a multiple
        if step % args.log_every == 0:
            writer.add_scalar("train_loss", losses[i].item(), step)
            writer.add_scalar("lr", lrs[i], step)
            say(args, f"step {step}, loss {losses[i].item():.4f}")
    log_epoch_scalars(writer, record, classes)
    writer.add_image("confusion_matrix", confusion_image(confusion, classes), record["epoch"], dataformats="HWC")
    writer.add_image("test_predictions", prediction_grid(*grid, classes), record["epoch"], dataformats="HWC")
    writer.flush()
    append_metrics(metrics_file, record)


def log_epoch_scalars(writer, record, classes):
    epoch = record["epoch"]
    for key in ("test_loss", "test_accuracy", "train_loss_mean", "train_accuracy", "images_per_s", "epoch_seconds"):
        if key in record:  # checkpoints from older versions lack some
            writer.add_scalar(key, record[key], epoch)
    for name, acc in zip(classes, record.get("per_class_accuracy", [])):
        writer.add_scalar(f"per_class_accuracy/{name}", acc, epoch)


def per_class_accuracy(confusion):
    totals = confusion.sum(1).clamp(min=1)
    return (confusion.diag().double() / totals).tolist()


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


# ---------------------------------------------------------------------------------------------- main

def evaluate_only(args, device):
    net = load_tudui(args.evaluate, map_location="cpu").to(device, memory_format=torch.channels_last)
    images, labels, classes = load_test_split(args.dataset, args.data_dir, not args.no_download, net.classes)
    if len(classes) != len(net.classes):
        raise UsageError(f"{args.evaluate} predicts {len(net.classes)} classes but the dataset has {len(classes)}; "
                         "evaluate it on the dataset it was trained for")
    if classes != net.classes:  # scored all the same: folders named 0..9 are a common way to store CIFAR-10
        print(f"note: the test classes ({', '.join(classes)}) are not the class names of {args.evaluate} "
              f"({', '.join(net.classes)}); test class i in this order is scored as its class i", file=sys.stderr)
    result = test(net, images.to(device), labels.to(device), len(classes), net.preprocess, device, args.amp, args.tta)
    print(format_report(result, net.classes))
    return {k: v for k, v in result.items() if k != "confusion"} | {
        "per_class_accuracy": dict(zip(net.classes, per_class_accuracy(result["confusion"])))}


def format_report(result, classes):
    accs = per_class_accuracy(result["confusion"])
    width = max(6, max(len(c) for c in classes))
    lines = [f"test loss {result['test_loss']:.4f}, accuracy {result['test_accuracy']:.2%} "
             f"on {result['confusion'].sum().item()} images", "",
             f"{'class':<{width}}  accuracy",
             *(f"{c:<{width}}  {a:8.2%}" for c, a in zip(classes, accs)), "",
             "confusion matrix (rows: true class, columns: predicted)",
             " " * width + "".join(f"{c[:6]:>7}" for c in classes)]
    for c, row in zip(classes, result["confusion"].tolist()):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def prepare_data(args, device):
    train_x, train_y, test_x, test_y, classes = load_dataset(args.dataset, args.data_dir, not args.no_download)
    preprocess = dict(TUTORIAL_PREPROCESS)
    if args.normalize:
        preprocess["mean"], preprocess["std"] = channel_stats(train_x)
    # One copy to the device; every batch is then a slice of these tensors.
    return {"train_x": train_x.to(device), "train_y": train_y.to(device), "test_x": test_x.to(device),
            "test_y": test_y.to(device), "classes": classes, "preprocess": preprocess}


def resumable_checkpoint(ckpt_dir):
    """The checkpoint in CKPT_DIR to resume its run from: last.pth, else the latest epoch's, else best.pth;
    None when it holds none."""
    ckpt_dir = Path(ckpt_dir)
    epochs = [p for p in ckpt_dir.glob("tudui_epoch_*.pth") if p.stem.rpartition("_")[2].isdigit()]
    candidates = [ckpt_dir / "last.pth", *sorted(epochs, key=lambda p: -int(p.stem.rpartition("_")[2])),
                  ckpt_dir / "best.pth"]
    return next((path for path in candidates if path.exists()), None)


def refuse_to_overwrite(ckpt_dir):
    """A new run never writes over the checkpoints of an earlier one."""
    found = resumable_checkpoint(ckpt_dir)
    if found is not None:
        raise UsageError(f"{ckpt_dir} already holds the checkpoints of an earlier run; continue it with --resume "
                         f"{found}, or give this run another --run-name (or --ckpt-dir)")


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
            raise UsageError(f"cannot create {e.filename} ({e.strerror}); choose another --logdir or --ckpt-dir") from None
        self.locks = [RunLock(self.run_dir, "--run-name")]
        if self.ckpt_dir.resolve() != self.run_dir.resolve():  # a shared --ckpt-dir needs its own lock
            try:
                self.locks.append(RunLock(self.ckpt_dir, "--ckpt-dir"))
            except UsageError:
                self.locks[0].release()
                raise
        self.writer = self.metrics_file = None
        try:
            if not resumed or Path(args.resume).resolve().parent != self.ckpt_dir.resolve():
                refuse_to_overwrite(self.ckpt_dir)
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


def train(args, resumed, device, rank=0, world=1):
    data = prepare_data(args, device)
    classes = data["classes"]
    model = build_model(len(classes), device, args.seed)
    graphed = args.cuda_graph and device.type == "cuda" and world == 1
    optimizer = build_optimizer(model, args, graphed)
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=args.label_smoothing)
    start_epoch, step, best_accuracy = 0, 0, -1.0
    if resumed:
        if resumed["classes"] != classes:
            raise UsageError(f"{args.resume} was trained on classes {resumed['classes']}, but this dataset has "
                             f"{classes}; resume with the same --dataset and --data-dir")
        model.load_state_dict(build_from_state_dict(resumed["model"], args.resume).state_dict())
        try:
            load_optimizer_state(optimizer, resumed["optimizer"])
            restore_rng_state(resumed["rng"], device)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            raise damaged_checkpoint(args.resume, f"its optimizer or RNG state does not load: {e}") from None
        data["preprocess"] = checked_preprocess(resumed.get("preprocess"), args.resume)
        start_epoch, step, best_accuracy = resumed["epoch"] + 1, resumed["step"], resumed["best_accuracy"]
    data["norm"] = normalizer(data["preprocess"], device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_fn = TrainStep(train_model, optimizer, loss_fn, data, args, graphed, world)

    if start_epoch >= args.epochs and rank == 0:
        print(f"nothing to train: {args.resume} has already trained {start_epoch} epoch{'s' * (start_epoch != 1)}, "
              f"and --epochs {args.epochs} is the total to reach; give a larger --epochs to train on", file=sys.stderr)
    recorder = RunRecorder(args, resumed, start_epoch, step) if rank == 0 else None
    steps_per_epoch = math.ceil(len(data["train_y"]) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    record = resumed["metrics"] if resumed else {}
    show_bar = not args.quiet and sys.stderr.isatty()
    try:
        if recorder and not resumed:
            log_run_start(recorder.writer, model, args, data, device)
        if recorder:
            say(args, f"run {recorder.run_dir} | checkpoints in {recorder.ckpt_dir} | device {device}"
                      f"{f' x {world} processes' if world > 1 else ''} | {len(data['train_y'])} train / "
                      f"{len(data['test_y'])} test images, {len(classes)} classes")
        with StopOnCtrlC() as stop:
            for epoch in range(start_epoch, args.epochs):
                started, started_at = time.perf_counter(), time.time()
                progress = Progress(steps_per_epoch, epoch, show_bar)
                try:
                    # the schedule counts epochs of this batch size, not the checkpoint's step: a run
                    # resumed with another --batch-size would otherwise jump elsewhere in it
                    losses, train_accuracy, lrs = train_one_epoch(
                        step_fn, data, epoch, epoch * steps_per_epoch, total_steps, args, device, progress, stop,
                        rank, world)
                finally:
                    progress.close()
                train_seconds = time.perf_counter() - started
                result = test(model, data["test_x"], data["test_y"], len(classes), data["preprocess"], device,
                              args.amp, rank=rank, world=world)
                stop_if_not_finite(losses, result["test_loss"], step, epoch, args)
                record = {
                    "epoch": epoch, "step": step + len(losses), "started_at": started_at,
                    "train_loss_mean": losses.double().mean().item(), "train_accuracy": train_accuracy,
                    "test_loss": result["test_loss"], "test_accuracy": result["test_accuracy"],
                    "per_class_accuracy": per_class_accuracy(result["confusion"]),
                    "lr": lrs[-1], "epoch_seconds": time.perf_counter() - started,
                    "train_seconds": train_seconds, "images_per_s": len(data["train_y"]) / train_seconds,
                }
                is_best = record["test_accuracy"] > best_accuracy
                best_accuracy = max(best_accuracy, record["test_accuracy"])
                if recorder:
                    recorder.epoch_done({
                        "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                        "optimizer": optimizer_state(optimizer), "epoch": epoch, "step": record["step"],
                        "config": plain_config(args), "classes": classes,
                        "preprocess": data["preprocess"], "test_accuracy": record["test_accuracy"],
                        "test_loss": record["test_loss"], "best_accuracy": best_accuracy, "metrics": record,
                        "rng": rng_state(device),
                    }, is_best, losses, lrs, step, args, classes, result["confusion"], grid_predictions(model, data))
                step = record["step"]
                say(args, f"epoch {epoch}: train loss {record['train_loss_mean']:.4f}, "
                          f"test loss {record['test_loss']:.4f}, test accuracy {record['test_accuracy']:.2%}, "
                          f"{record['epoch_seconds']:.1f} s, {record['images_per_s']:.0f} images/s")
    except Interrupted:
        last = resumable_checkpoint(recorder.ckpt_dir) if recorder else None
        how = f"resume with: python train.py --resume {last}" if last else "nothing saved yet"
        raise Interrupted(f"interrupted in epoch {epoch}; its partial progress is discarded. {how}") from None
    finally:
        if recorder:
            recorder.close()
    return {"epoch": record.get("epoch"), "step": step, "test_loss": record.get("test_loss"),
            "test_accuracy": record.get("test_accuracy"), "best_accuracy": best_accuracy,
            "train_loss": record.get("train_loss_mean"),
            "run_dir": str(recorder.run_dir) if recorder else None,
            "ckpt_dir": str(recorder.ckpt_dir) if recorder else None}


def stop_if_not_finite(losses, test_loss, step, epoch, args):
    """A diverged run stops before anything of its epoch is saved, so best.pth and last.pth stay good.
    Each step's loss is computed before its update, so weights that only the epoch's last step broke
    show up in the test loss alone."""
    finite = torch.isfinite(losses)
    if finite.all() and math.isfinite(test_loss):
        return
    what = (f"the training loss became non-finite at step {step + int((~finite).nonzero()[0]) + 1}"
            if not finite.all() else f"the weights became non-finite at step {step + len(losses)}, the last")
    raise UsageError(f"{what} (epoch {epoch}); the learning rate is likely too high for this network "
                     f"(--lr {args.lr}): lower it. Checkpoints of earlier epochs are untouched")


def keep_freed_memory():
    """Make CPU steps reuse the memory the step before freed. glibc's malloc maps large blocks straight
    from the system and unmaps them when freed, so each step's activations and gradients (64 MB for the
    first conv's output at batch 512) came back as fresh pages, each faulting on its first write. It
    stops doing so for blocks under 32 MB only as it sees them freed, which made the first epoch at batch
    128 take 1.3x-1.6x as long as later ones, and never for larger ones, which slowed every step at
    batch 512 (docs/experiments.md, Speed). Now no block is mapped: all come from the heap, and up to
    256 MB of freed heap is kept for reuse. Process-wide (it also holds for a notebook that calls main);
    results are unchanged, and other C libraries (macOS, musl) are left as they are."""
    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    mallopt(m_mmap_max, 0)  # glibc still maps memory when the heap cannot grow
    mallopt(m_trim_threshold, 256 << 20)


def main(argv=None):
    """Train (or with --evaluate, evaluate) and return the final metrics as a dict.
    Bad input exits with code 2 and one line on stderr."""
    rank, world = 0, 1
    try:
        args, resumed = parse_args(argv)
        if launched_world_size() > 1 and not args.evaluate:
            rank, world, device = join_torchrun(args)
        else:
            keep_freed_memory()  # not under torchrun, where gloo's exit then aborted more often (README)
            device = pick_device(args.device)
        if args.evaluate:
            return evaluate_only(args, device)
        metrics = train(args, resumed, device, rank, world)
        if world > 1:
            # ranks leave together: a rank finishing early and exiting while rank 0 still writes its files
            # sometimes aborted in gloo's native teardown ("terminate called without an active exception")
            torch.distributed.barrier()
    except (UsageError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as e:
        print(e, file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    if args.quiet and rank == 0:
        print(f"test accuracy {metrics['test_accuracy']:.2%}, checkpoints in {metrics['ckpt_dir']}")
    return metrics


def launched_world_size():
    """How many processes torchrun started (WORLD_SIZE); 1 outside torchrun."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"WORLD_SIZE must be a whole number of processes (got {value!r}); leave it to torchrun")
    return int(value)


def join_torchrun(args):
    """Under torchrun: join the process group (nccl on CUDA, gloo on CPU) and return (rank, world, device).
    --batch-size stays the global batch; only rank 0 prints and writes files."""
    import torch.distributed as dist

    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set: start several processes with torchrun "
                         "(see README), or unset WORLD_SIZE for one")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} is the global batch and must divide evenly across "
                         f"{world} processes; use a multiple of {world}")
    use_cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not use_cuda):
        raise UsageError(f"--device {args.device} cannot be used under torchrun here; use cuda (nccl) or cpu (gloo)")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if rank != 0:
        args.quiet = True
    return rank, world, device


def run_cli(entry):
    """Run a script's main. A reader that closes the pipe early (`| head`) ends it quietly, as any Unix tool;
    Ctrl-C outside the training loop (which stops itself cleanly), say while CIFAR-10 downloads, is one line
    and exit code 130, as inside it."""
    try:
        entry()
    except KeyboardInterrupt:
        print("\ninterrupted; files already saved are intact", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        raise SystemExit(1) from None


if __name__ == "__main__":
    exit_code = 0
    try:
        run_cli(main)
    except SystemExit as stop:
        exit_code = stop.code or 0
    if os.environ.get("WORLD_SIZE", "1") != "1":
        # gloo's worker threads outlive destroy_process_group, and tearing them down as the interpreter exited
        # sometimes aborted a rank (SIGABRT, "terminate called without an active exception") after every file
        # was written and closed, and torchrun called a finished run failed; an error's exit (2) went through
        # the same teardown. End here with the run's own exit code, without it (README)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
