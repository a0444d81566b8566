"""Checkpoints: loading any Tudui checkpoint safely (train.py's, a state_dict, or the tutorial's
whole-model pickles, without running code from them), the fields of a training checkpoint that resuming
relies on, with their checks, the building of a training checkpoint's dict, and the record of what made
a checkpoint. Writing files is runs.py's job.
"""
import pickle
import re
import struct
import subprocess
import warnings
import zipfile
from pathlib import Path

import torch

from model import Tudui
from tudui import __version__
from tudui.batches import TUTORIAL_PREPROCESS
from tudui.datasets import CIFAR10_CLASSES
from tudui.errors import CheckpointError, SettingsError
from tudui.settings import plain

CHECKPOINT_FORMAT = "tudui-train-checkpoint/1"


class _PickledModule:
    """Stand-in for the module classes inside the tutorial's whole-model pickles
    (`torch.save(tudui, path)`). Unpickling fills plain attributes only; no module code runs."""

    def __setstate__(self, state):
        self.state = state


# Exactly the classes a tutorial whole-model file names, each mapped to the inert stand-in.
_WHOLE_MODEL_GLOBALS = [(_PickledModule, name) for name in (
    "__main__.Tudui", "model.Tudui",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.flatten.Flatten",
    "torch.nn.modules.linear.Linear",
)]


def _state_dict_of_pickled_module(module, prefix=""):
    state = getattr(module, "state", None)
    if not isinstance(state, dict):
        raise CheckpointError("the pickled model has an unexpected layout")
    tensors = {}
    skip_buffers = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None and name not in skip_buffers:
                tensors[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        tensors.update(_state_dict_of_pickled_module(child, prefix + name + "."))
    return tensors


def begins_as_torch_save_file(path):
    """Whether the file starts as torch.save writes: a zip archive, or (the legacy format) a pickle of
    protocol 2 or later. A file that does not was never a checkpoint, so 'truncated' would mislead."""
    try:
        with open(path, "rb") as file:
            start = file.read(4)
    except (OSError, TypeError):  # not a path (a file object), or unreadable: no claim either way
        return True
    return start in (b"", b"PK\x03\x04") or start[:1] == b"\x80"


def unreadable(path, reason):
    """The error for a checkpoint torch.load could not read, whose reason is the first line of torch's."""
    if not begins_as_torch_save_file(path):
        return CheckpointError(f"checkpoint {path} is not a PyTorch file: it does not begin as torch.save's files "
                               "do; check that it names a .pth checkpoint")
    return CheckpointError(f"checkpoint {path} is not a readable PyTorch file ({reason}); it may be truncated or "
                           "corrupt, use another copy (last.pth, best.pth or an epoch file)")


def read_checkpoint(path, map_location="cpu"):
    """torch.load(path, weights_only=True), with the tutorial's whole-model pickles allowed through
    inert stand-ins. Any other global in the pickle is refused by torch before it can run."""
    try:
        with torch.serialization.safe_globals(_WHOLE_MODEL_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickle protocols; errors below say it all
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory; pass a .pth file inside it") from None
    except PermissionError:
        raise CheckpointError(f"checkpoint {path} is not readable; check its permissions") from None
    except pickle.UnpicklingError as e:
        asked = re.search(r"GLOBAL ([\w.]+)", str(e))
        if asked is None:  # not a refused global: the pickle itself is damaged
            raise unreadable(path, "damaged pickle") from None
        raise CheckpointError(
            f"checkpoint {path} was refused: its pickle asks for {asked.group(1)}, which is not "
            "on the allow-list; "
            "nothing from it was run. Only load checkpoints from sources you trust, saved as a state_dict") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, AssertionError,
            IndexError, OverflowError, MemoryError, UnicodeDecodeError, struct.error, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise unreadable(path, reason[:200]) from None


def unpack_checkpoint(obj, path="checkpoint"):
    """(state_dict, classes or None, preprocess) from anything read_checkpoint returns."""
    if isinstance(obj, _PickledModule):
        return _state_dict_of_pickled_module(obj), None, dict(TUTORIAL_PREPROCESS)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        classes = obj.get("classes")
        named = isinstance(classes, (list, tuple)) and classes and all(isinstance(name, str) for name in classes)
        return (_unwrapped(obj["model"]), (list(classes) if named else None),
                checked_preprocess(obj.get("preprocess"), path))
    # PyTorch's recipe for a general checkpoint, and Lightning's, keep the weights under these keys
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return _unwrapped(obj[key]), None, dict(TUTORIAL_PREPROCESS)
    if _is_state_dict(obj):
        return _unwrapped(obj), None, dict(TUTORIAL_PREPROCESS)
    raise CheckpointError(f"{path} holds no Tudui weights (found {type(obj).__name__}); "
                          "pass a checkpoint written by train.py, a state_dict or a tutorial model file")


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def _unwrapped(state_dict):
    """STATE_DICT with the key prefix that a wrapper around the model added, when every key has it."""
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
            return _unwrapped({k[len(prefix):]: v for k, v in state_dict.items()})
    return state_dict


def checked_preprocess(preprocess, path="checkpoint"):
    """A checkpoint's preprocessing, or a CheckpointError when it is not what the network's 3-channel
    input needs: 3 means and 3 positive stds, or neither (plain x / 255)."""
    merged = dict(TUTORIAL_PREPROCESS)
    if isinstance(preprocess, dict):
        merged.update((key, preprocess[key]) for key in TUTORIAL_PREPROCESS if key in preprocess)
    shapes = {key: _finite_shape(value) for key, value in merged.items() if value is not None}
    fine = ((preprocess is None or isinstance(preprocess, dict))
            and shapes.get("mean", (3,)) == shapes.get("std", (3,)) == (3,)
            and (merged["mean"] is None) == (merged["std"] is None)
            and (merged["std"] is None or min(merged["std"]) > 0))
    if not fine:
        raise CheckpointError(f"{path} has damaged preprocessing settings (expected 3 means and 3 positive stds); "
                              "use another copy of the checkpoint")
    return merged


def _finite_shape(value):
    """The shape of VALUE as a tensor of finite numbers, or None when it is not one."""
    try:
        numbers = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None
    return tuple(numbers.shape) if torch.isfinite(numbers).all() else None


def build_from_state_dict(state_dict, path="checkpoint"):
    """A Tudui with these weights, or a CheckpointError naming the mismatch."""
    final_bias = state_dict.get("model.8.bias")
    if not torch.is_tensor(final_bias) or final_bias.dim() != 1:
        keys = ", ".join(list(state_dict)[:4])
        raise CheckpointError(f"{path} is not a Tudui checkpoint: expected keys model.0.weight ... model.8.bias, "
                              f"found {keys}{' ...' if len(state_dict) > 4 else ''}")
    if final_bias.shape[0] == 0:
        raise CheckpointError(f"{path} has a final layer with no outputs, so it can predict no class; "
                              "use another copy of the checkpoint")
    net = Tudui(num_classes=final_bias.shape[0])
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the Tudui network: missing {missing or 'nothing'}, "
                              f"unexpected {unexpected or 'nothing'}")
    for key, tensor in expected.items():
        got = state_dict[key]
        if not torch.is_tensor(got) or got.shape != tensor.shape:
            shape = tuple(got.shape) if torch.is_tensor(got) else type(got).__name__
            raise CheckpointError(f"{path} does not match the Tudui network: {key} has shape {shape}, "
                                  f"Tudui needs {tuple(tensor.shape)}")
        if not torch.isfinite(got).all():
            raise CheckpointError(f"{path} has non-finite weights (NaN or infinity) in {key}, saved from a run that "
                                  "had diverged; use a checkpoint of an earlier epoch")
    net.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return net


def load_tudui(path, map_location="cpu"):
    """Load a Tudui in eval mode from any Tudui checkpoint: one written by train.py, a bare state_dict,
    or a tutorial `torch.save(tudui, ...)` file. The model carries `.classes` (names, one per output),
    `.preprocess` (the pixel normalization it was trained with), and from train.py's checkpoints
    `.config` (the run's settings) and `.provenance` (what made it), else None. Raises CheckpointError."""
    checkpoint = read_checkpoint(path, map_location)
    state_dict, classes, preprocess = unpack_checkpoint(checkpoint, path)
    net = build_from_state_dict(state_dict, path)
    num_classes = net.model[-1].out_features
    if classes is None or len(classes) != num_classes:
        classes = list(CIFAR10_CLASSES) if num_classes == 10 else [str(i) for i in range(num_classes)]
    net.classes = classes
    net.preprocess = preprocess
    net.config, net.provenance = (checkpoint.get(key) if isinstance(checkpoint, dict) and isinstance(
        checkpoint.get(key), dict) else None for key in ("config", "provenance"))
    return net.to(map_location).eval()


# ---------------------------------------------------------------------------------------------- training checkpoints

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


def training_checkpoint(model, optimizer, settings, data, record, best_accuracy, device, made_by):
    """A training checkpoint: a plain dict, which torch.load(path, weights_only=True) reads, with what a
    resumed run needs and RECORD, the epoch's metrics.jsonl line."""
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer_state(optimizer),
            "epoch": record["epoch"], "step": record["step"], "config": plain(settings), "classes": data.classes,
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


def load_optimizer_state(optimizer, state):
    """Momentum buffers from a checkpoint. The settings stay this run's own (load_state_dict would put
    the checkpoint's back): they are the checkpoint's unless a flag such as --weight-decay changed them."""
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, own):
        group.update(settings)


def restore(checkpoint, path, model, optimizer, device, classes):
    """Put a training CHECKPOINT's weights, momentum buffers and RNG state into this run's MODEL and
    OPTIMIZER, for a dataset of CLASSES. Returns its input normalization (which the weights learned), the
    first epoch left to train, its step and its best accuracy."""
    if checkpoint["classes"] != classes:
        raise SettingsError(f"{path} was trained on classes {checkpoint['classes']}, but this dataset has "
                            f"{classes}; resume with the same --dataset and --data-dir")
    model.load_state_dict(build_from_state_dict(checkpoint["model"], path).state_dict())
    try:
        load_optimizer_state(optimizer, checkpoint["optimizer"])
        restore_rng_state(checkpoint["rng"], device)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise damaged_checkpoint(path, f"its optimizer or RNG state does not load: {e}") from None
    return (checked_preprocess(checkpoint.get("preprocess"), path), checkpoint["epoch"] + 1, checkpoint["step"],
            checkpoint["best_accuracy"])


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
