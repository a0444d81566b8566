"""What a training checkpoint holds so that a run can resume from it: its fields and their checks, the
building of its dict, the optimizer's, lr scheduler's and RNG's state, restoring a run from it, and the
record of what made it. Reading files safely is checkpoints.py's job; writing them, runs.py's.
"""
import subprocess
from pathlib import Path

import torch

from tudui import __version__
from tudui.checkpoints import _unwrapped, checked_preprocess, load_weights, read_checkpoint
from tudui.console import shown
from tudui.errors import CheckpointError, SettingsError
from tudui.integrity import weights_checksum
from tudui.settings import plain

CHECKPOINT_FORMAT = "tudui-train-checkpoint/1"


def load_training_checkpoint(path):
    """A checkpoint train.py wrote, with every field that resuming relies on checked."""
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
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62

    def number(value):
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    def record(value):
        return (isinstance(value, dict) and value.get("epoch") == checkpoint.get("epoch")
                and all(number(v) or (isinstance(v, list) and all(map(number, v))) for v in value.values()))

    checks = {
        "model": lambda v: isinstance(v, dict),
        "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list),
        "epoch": count,
        "step": count,
        "config": lambda v: isinstance(v, dict),
        "classes": lambda v: isinstance(v, list) and all(isinstance(name, str) for name in v),
        "best_accuracy": lambda v: number(v) and v is not None,
        "metrics": record,
        "rng": lambda v: isinstance(v, dict) and torch.is_tensor(v.get("torch")),
        "scheduler": lambda v: v is None or isinstance(v, dict),  # None: saved before schedulers were
    }
    return [name for name, fine in checks.items() if not fine(checkpoint.get(name))]


def damaged_checkpoint(path, what):
    return CheckpointError(f"{path} is a damaged training checkpoint ({what}), so it cannot be resumed; resume "
                           "from another of the run's checkpoints (last.pth, best.pth or an epoch file)")


def training_checkpoint(model, optimizer, scheduler, settings, data, record, best_accuracy, device, made_by):
    """A training checkpoint: a plain dict, which torch.load(path, weights_only=True) reads, with what a
    resumed run needs (the optimizer's and the lr scheduler's state, and their classes) and RECORD, the
    epoch's metrics.jsonl line."""
    weights = model.state_dict()
    return {"format": CHECKPOINT_FORMAT, "model": weights, "weights_sha256": weights_checksum(weights),
            "optimizer": optimizer_state(optimizer), "optimizer_class": type(optimizer).__name__,
            "scheduler": plain_numbers(scheduler.state_dict()), "scheduler_class": type(scheduler).__name__,
            "epoch": record["epoch"], "step": record["step"], "config": plain(settings), "classes": data.classes,
            "network": str(model),
            "preprocess": data.preprocess, "test_accuracy": record["test_accuracy"],
            "test_loss": record["test_loss"], "best_accuracy": best_accuracy, "metrics": record,
            "rng": rng_state(device), "provenance": made_by}


def optimizer_state(optimizer):
    """state_dict() with a plain-number lr (it may be a device tensor) and no fused kernel, so that a
    checkpoint resumes on any device."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"] = float(group["lr"])
        group["fused"] = None
    return state


def plain_numbers(state):
    """A scheduler's state_dict with its 0-dim tensors (the lrs of a CUDA graph's optimizer) as numbers."""
    if isinstance(state, dict):
        return {key: plain_numbers(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(plain_numbers(value) for value in state)
    return float(state) if torch.is_tensor(state) and state.dim() == 0 else state


def load_optimizer_state(optimizer, state):
    """Momentum buffers and the lr from a checkpoint. The other settings stay this run's own
    (load_state_dict would put the checkpoint's back): they are the checkpoint's unless a flag such as
    --weight-decay changed them."""
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


def restore(checkpoint, path, model, optimizer, scheduler, device, classes, steps_per_epoch):
    """Put a training CHECKPOINT's weights, optimizer and lr scheduler state and RNG state into this run's
    MODEL, OPTIMIZER and SCHEDULER, for a dataset of CLASSES. Returns its input normalization (which the
    weights learned), the first epoch left to train, its step and its best accuracy."""
    if checkpoint["classes"] != classes:
        raise SettingsError(f"{path} was trained on classes {checkpoint['classes']}, but this dataset has "
                            f"{classes}; resume with the same --dataset and --data-dir")
    load_weights(model, _unwrapped(checkpoint["model"]), path, checkpoint.get("network"))
    for what, built in (("optimizer", optimizer), ("scheduler", scheduler)):
        saved = checkpoint.get(f"{what}_class", type(built).__name__)  # older checkpoints record none
        if saved != type(built).__name__:
            raise SettingsError(f"{path} was trained with the {what} {shown(saved)}, but train.py now builds "
                                f"{type(built).__name__}, which its saved state does not fit; build {shown(saved)} "
                                f"in train.py to resume, or start a new run")
    try:
        load_optimizer_state(optimizer, checkpoint["optimizer"])
        restore_schedule(scheduler, checkpoint.get("scheduler"), (checkpoint["epoch"] + 1) * steps_per_epoch)
        restore_rng_state(checkpoint["rng"], device)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise damaged_checkpoint(path, f"its optimizer or RNG state does not load: {e}") from None
    return (checked_preprocess(checkpoint.get("preprocess"), path), checkpoint["epoch"] + 1, checkpoint["step"],
            checkpoint["best_accuracy"])


def restore_schedule(scheduler, state, first_step):
    """A scheduler's saved STATE (None in checkpoints saved before schedulers were). A LambdaLR, such as
    --schedule's, is then put at FIRST_STEP, the first step left, with this run's base lrs and function: a
    pure function of the step, so a resumed run's --lr, --epochs and --batch-size take effect."""
    base_lrs = list(scheduler.base_lrs)
    if state is not None:
        scheduler.load_state_dict(state)
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs, scheduler.last_epoch = base_lrs, first_step
        for group, base_lr, factor in zip(scheduler.optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(first_step)


def provenance(device, command):
    """What makes a checkpoint: the project's version and git commit (None outside a checkout), torch's
    and torchvision's versions, the device, and the command line or call that started the process."""
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"version": __version__, "git_commit": git_commit(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "device": f"{device} ({name})" if name else str(device),
            "command": command}


def git_commit():
    """The checkout's commit, with "+changes" when its tracked files differ from it; None when the code
    does not run from a git checkout, or git cannot say."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changes else "") if commit else None


def rng_state(device):
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
