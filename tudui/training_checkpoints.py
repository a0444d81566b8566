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
from tudui.settings import FIELDS, plain

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


def resumable_checkpoint(ckpt_dir):
    """The checkpoint in CKPT_DIR to resume its run from: last.pth, else the latest epoch's, else best.pth;
    None when it holds none."""
    ckpt_dir = Path(ckpt_dir)
    epochs = [p for p in ckpt_dir.glob("tudui_epoch_*.pth") if p.stem.rpartition("_")[2].isdigit()]
    candidates = [ckpt_dir / "last.pth", *sorted(epochs, key=lambda p: -int(p.stem.rpartition("_")[2])),
                  ckpt_dir / "best.pth"]
    return next((path for path in candidates if path.exists()), None)


def auto_resume(given):
    """--resume auto: the newest whole checkpoint of the run that --run-name names (in --ckpt-dir, when
    given), last.pth, else the newest epoch file that loads; None when the run has saved none yet, so that
    it starts. The same command thus goes on after a preemption, however the process was stopped."""
    if given.get("run_name") is None:
        raise SettingsError("--resume auto needs --run-name: the run it goes on with, or starts when it has none")
    ckpt_dir = Path(given.get("ckpt_dir") or Path(given.get("logdir", FIELDS["logdir"].default)) / given["run_name"])
    epochs = sorted(ckpt_dir.glob("tudui_epoch_*.pth"), key=lambda p: -int(p.stem.rpartition("_")[2])
                    if p.stem.rpartition("_")[2].isdigit() else 1)
    found = [path for path in [ckpt_dir / "last.pth", *epochs] if path.is_file()]
    problems = []
    for path in found:
        try:
            load_training_checkpoint(path)
            return str(path)
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError(f"--resume auto found no whole checkpoint in {ckpt_dir}: {problems[0]}")
    return None


def refuse_to_overwrite(ckpt_dir, resumed=None, resume=None):
    """A new run never writes over the checkpoints of an earlier one. A run resumed from RESUME, a
    checkpoint in CKPT_DIR, goes on writing there, unless that folder holds a later epoch than RESUMED
    (its checkpoint), in last.pth or an epoch file: resuming would then overwrite newer results, so it
    must branch instead."""
    if resume and Path(resume).resolve().parent == Path(ckpt_dir).resolve():
        last = Path(ckpt_dir) / "last.pth"
        saved = [(epoch_of(last), last)] if last.exists() else []
        saved += [(int(p.stem.rpartition("_")[2]), p) for p in Path(ckpt_dir).glob("tudui_epoch_*.pth")
                  if p.stem.rpartition("_")[2].isdigit()]
        newer = [(epoch, path == last, path) for epoch, path in saved if (epoch or -1) > resumed["epoch"]]
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


def epoch_of(path):
    """The epoch of the training checkpoint at PATH; None when it has none or cannot be read."""
    try:
        epoch = read_checkpoint(path).get("epoch")
    except (CheckpointError, AttributeError):  # unreadable, or no dict
        return None
    return epoch if isinstance(epoch, int) else None


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
