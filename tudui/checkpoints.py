"""What a checkpoint is and how one is read safely: a file from outside checked, loaded with weights only
(the tutorial's pickles through inert stand-ins), its weights' checksum, load_tudui, and the training
checkpoint's fields. Writes nothing: saving and resuming a run is runs.py's.
"""
import hashlib
import inspect
import itertools
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile

import torch
from torch import nn

from model import Tudui
from tudui.console import shown
from tudui.errors import CheckpointError, SettingsError

CHECKPOINT_FORMAT = "tudui-train-checkpoint/1"
MAX_CHECKPOINT_BYTES = 256 << 20  # Tudui's checkpoints are 0.6 MB; a ResNet-50's weights, about 100 MB
TUTORIAL_PREPROCESS = {"mean": None, "std": None}  # x / 255 as ToTensor; with mean and std, then (x - mean) / std
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def class_names(count):
    """Names for COUNT outputs when a checkpoint names none: CIFAR-10's for 10, else the numbers."""
    return list(CIFAR10_CLASSES) if count == 10 else [str(i) for i in range(count)]


def regular_file_problem(path):
    """Why PATH is no file to read (a named pipe or a device blocks a read forever), or None (missing too)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, TypeError, ValueError):
        return None
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
        "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    return f"is {kind}, not a file"


def checkpoint_size_problem(path):
    """Why PATH is refused before it is unpickled, or None: over MAX_CHECKPOINT_BYTES on disk or unpacked,
    or holding a compressed zip member (a decompression bomb: torch.save writes none)."""
    try:
        if os.path.getsize(path) > MAX_CHECKPOINT_BYTES:
            return (f"is {os.path.getsize(path) >> 20} MB, over the {MAX_CHECKPOINT_BYTES >> 20} MB of any "
                    "reasonable network")
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, TypeError):
        return None  # the reader names what is wrong with it
    compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if compressed:
        return f"holds a compressed member ({compressed[0]}), which torch.save never writes: a possible zip bomb"
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_CHECKPOINT_BYTES:
        return f"unpacks to {unpacked >> 20} MB, over the {MAX_CHECKPOINT_BYTES >> 20} MB of any reasonable network"
    return None


def weights_checksum(state_dict):
    """The SHA-256 of a state_dict's names, dtypes, shapes and bytes, in name order: a flipped bit shows."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class _PickledModule:  # stands in for the module classes of `torch.save(tudui, path)`: no module code runs
    def __setstate__(self, state):
        self.state = state


_WHOLE_MODEL_GLOBALS = [(_PickledModule, name) for name in (  # exactly the classes those files name
    "__main__.Tudui", "model.Tudui", "torch.nn.modules.container.Sequential", "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.pooling.MaxPool2d", "torch.nn.modules.flatten.Flatten", "torch.nn.modules.linear.Linear")]


def _state_dict_of_pickled_module(module, prefix=""):
    state = getattr(module, "state", None)
    if not isinstance(state, dict):
        raise CheckpointError("the pickled model has an unexpected layout")
    skip = state.get("_non_persistent_buffers_set") or set()
    tensors = {prefix + name: value for group in ("_parameters", "_buffers")
               for name, value in (state.get(group) or {}).items() if value is not None and name not in skip}
    for name, child in (state.get("_modules") or {}).items():
        tensors.update(_state_dict_of_pickled_module(child, prefix + name + "."))
    return tensors


def unreadable(path, reason):
    """The error for a file torch.load could not read; 'not a PyTorch file' when it does not begin as torch.save's
    files do (a zip, or a pickle of protocol 2 or later)."""
    try:
        with open(path, "rb") as file:
            start = file.read(4)
    except (OSError, TypeError):  # not a path (a file object), or unreadable: no claim either way
        start = b""
    if not (start in (b"", b"PK\x03\x04") or start[:1] == b"\x80"):
        return CheckpointError(f"checkpoint {path} is not a PyTorch file: it does not begin as torch.save's files "
                               "do; check that it names a .pth checkpoint")
    return CheckpointError(f"checkpoint {path} is not a readable PyTorch file ({reason}); it may be truncated or "
                           "corrupt, use another copy (last.pth, best.pth or an epoch file)")


def read_checkpoint(path, map_location="cpu"):
    """torch.load(path, weights_only=True), which refuses any global but the stand-ins' before it runs; a file
    that is no regular one, or too large, is refused first, and train.py's weights must match their checksum."""
    problem = regular_file_problem(path) or checkpoint_size_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} {problem}; pass a .pth checkpoint file")
    try:
        with torch.serialization.safe_globals(_WHOLE_MODEL_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickle protocols; errors below say it all
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
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
        raise CheckpointError(f"checkpoint {path} was refused: its pickle asks for {asked.group(1)}, which is not on "
                              "the allow-list; nothing from it was run. Only load checkpoints from sources you "
                              "trust, saved as a state_dict") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, AssertionError,
            IndexError, OverflowError, MemoryError, UnicodeDecodeError, struct.error, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise unreadable(path, reason[:200]) from None
    if isinstance(checkpoint, dict) and "weights_sha256" in checkpoint and isinstance(checkpoint.get("model"), dict):
        if checkpoint["weights_sha256"] != weights_checksum(checkpoint["model"]):
            raise CheckpointError(f"checkpoint {path} is damaged: its weights do not match the checksum saved with "
                                  "them; use another copy (last.pth, best.pth or an epoch file)")
    return checkpoint


def unpack_checkpoint(obj, path="checkpoint"):
    """(state_dict, classes or None, preprocess) from anything read_checkpoint returns."""
    if isinstance(obj, _PickledModule):
        return _state_dict_of_pickled_module(obj), None, dict(TUTORIAL_PREPROCESS)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        classes = obj.get("classes")
        named = isinstance(classes, (list, tuple)) and classes and all(isinstance(name, str) for name in classes)
        return (unwrapped(obj["model"]), (list(classes) if named else None),
                checked_preprocess(obj.get("preprocess"), path))
    for key in ("model_state_dict", "state_dict"):  # PyTorch's recipe for a general checkpoint, and Lightning's
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return unwrapped(obj[key]), None, dict(TUTORIAL_PREPROCESS)
    if _is_state_dict(obj):
        return unwrapped(obj), None, dict(TUTORIAL_PREPROCESS)
    raise CheckpointError(f"{path} holds no Tudui weights (found {type(obj).__name__}); "
                          "pass a checkpoint written by train.py, a state_dict or a tutorial model file")


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def unwrapped(state_dict):
    """STATE_DICT without the key prefix a wrapper around the model added, when every key has it."""
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
            return unwrapped({k[len(prefix):]: v for k, v in state_dict.items()})
    return state_dict


def checked_preprocess(preprocess, path="checkpoint"):
    """A checkpoint's preprocessing: 3 means and 3 positive stds, or neither (plain x / 255)."""
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
    try:
        numbers = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None
    return tuple(numbers.shape) if torch.isfinite(numbers).all() else None


def num_classes_argument(network, num_classes):
    """(num_classes,) for NETWORK (model.py's Tudui), or () for 10 when it takes none, as the tutorial's."""
    if inspect.signature(network).parameters:
        return (num_classes,)
    if num_classes != 10:
        raise SettingsError(f"model.py's Tudui takes no num_classes argument, so it has CIFAR-10's 10 outputs, but "
                            f"this data has {num_classes} classes; give it one: def __init__(self, num_classes=10), "
                            "used as the last layer's outputs")
    return ()


class TutorialTudui(nn.Module):
    """The tutorial's network, for files that record none (its own, bare state_dicts) when model.py has changed."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, 1, 2),
                                   nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, 1, 2), nn.MaxPool2d(2), nn.Flatten(),
                                   nn.Linear(64 * 4 * 4, 64), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.model(x)


def mismatch(net, state_dict):
    """What keeps STATE_DICT from loading strictly into NET, in a few words; "" when nothing does."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} is {tuple(state_dict[k].shape) if torch.is_tensor(state_dict[k]) else type(state_dict[k]).__name__}"
              f" in the checkpoint, {tuple(v.shape)} in model.py" for k, v in expected.items()
              if k in state_dict and not (torch.is_tensor(state_dict[k]) and state_dict[k].shape == v.shape)]
    parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in
             (("missing", missing), ("unexpected", unexpected)) if keys] + shapes[:2]
    return "; ".join(parts)


def load_weights(net, state_dict, path, network=None):
    """STATE_DICT loaded strictly into NET, or a CheckpointError naming what differs (and the first line where
    NETWORK, the one the file recorded, differs) or the weights that are not finite."""
    problem = mismatch(net, state_dict)
    if problem:
        pairs = itertools.zip_longest(network.splitlines()[1:], str(net).splitlines()[1:], fillvalue="(nothing)") \
            if isinstance(network, str) else []  # after the first line, the class's name
        first = next((f"; it was trained with `{old.strip()}` where model.py now has `{new.strip()}`"
                      for old, new in pairs if old != new), "")
        raise CheckpointError(f"model.py has changed since {path} was trained ({problem}){first}; use the model.py "
                              "it was trained with, or train anew")
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path} has non-finite weights (NaN or infinity) in {key}, saved from a run that "
                                  "had diverged; use a checkpoint of an earlier epoch")
    net.load_state_dict(state_dict)
    return net


class FlipAveraged(nn.Module):
    """--tta: the log of the mean of NET's class probabilities for an image and for its mirror image."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return (self.net(x).float().softmax(1) + self.net(x.flip(3)).float().softmax(1)).div_(2).log_()


def load_tudui(path, map_location="cpu", tutorials=False):
    """A Tudui in eval mode from any Tudui checkpoint (train.py's, a state_dict, a tutorial `torch.save(tudui,
    ...)` file), taking ToTensor's input (N, 3, 32, 32) and normalizing it itself; with `.classes`,
    `.preprocess`, and from train.py's files `.config`, `.provenance`, `.test_accuracy` (else None)."""
    checkpoint = read_checkpoint(path, map_location)
    state_dict, classes, preprocess = unpack_checkpoint(checkpoint, path)
    field = checkpoint.get if isinstance(checkpoint, dict) else lambda key: None
    # model.py's Tudui, or the tutorial's network (with TUTORIALS, or when only it fits a file that records no
    # network), with outputs for the last bias's size, the count of CLASSES, or 10
    biases = [v for k, v in state_dict.items() if k.endswith("bias") and torch.is_tensor(v) and v.dim() == 1]
    counts = list(dict.fromkeys(([biases[-1].shape[0]] if biases else []) + ([len(classes)] if classes else []) + [10]))
    if counts[0] == 0:
        raise CheckpointError(f"{path} has a final layer with no outputs, so it can predict no class; "
                              "use another copy of the checkpoint")
    try:
        nets = [TutorialTudui(count) if tutorials else Tudui(*num_classes_argument(Tudui, count)) for count in counts]
    except SettingsError as e:
        raise CheckpointError(f"{path} predicts {counts[0]} classes, and {str(e).split(', but ')[0]}; give it a "
                              "num_classes argument: def __init__(self, num_classes=10)") from None
    if field("network") is None:
        nets += [TutorialTudui(count) for count in counts]
    fitting = [net for net in nets if not mismatch(net, state_dict)]
    net = load_weights(fitting[0] if fitting else nets[0], state_dict, path, field("network"))
    with torch.no_grad():
        num_classes = net.eval()(torch.zeros(1, 3, 32, 32)).shape[1]
    net.classes = [shown(name) for name in classes] if classes and len(classes) == num_classes else class_names(
        num_classes)
    net.preprocess = preprocess
    net.config, net.provenance = (field(k) if isinstance(field(k), dict) else None for k in ("config", "provenance"))
    accuracy = field("test_accuracy")
    net.test_accuracy = float(accuracy) if isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1 else None
    if preprocess.get("mean") is not None:  # normalized in a pre-hook, by buffers left out of the state_dict
        for name in ("mean", "std"):
            net.register_buffer(f"input_{name}", torch.tensor(preprocess[name]).view(1, 3, 1, 1), persistent=False)
        net.register_forward_pre_hook(lambda module, args: ((args[0] - module.input_mean) / module.input_std,
                                                            *args[1:]))
    return net.to(map_location).eval()


def load_training_checkpoint(path):
    """A checkpoint train.py wrote, each field resuming relies on checked."""
    obj = read_checkpoint(path)
    if not (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path} is not a training checkpoint written by train.py (it lacks the optimizer "
                              "state, epoch and settings to continue from), so it cannot be resumed; --evaluate "
                              "and predict.py take it as it is")

    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62

    def number(v):
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    checks = {
        "model": lambda v: isinstance(v, dict),
        "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list),
        "epoch": count, "step": count, "config": lambda v: isinstance(v, dict),
        "classes": lambda v: isinstance(v, list) and all(isinstance(name, str) for name in v),
        "best_accuracy": lambda v: number(v) and v is not None,
        "metrics": lambda v: isinstance(v, dict) and v.get("epoch") == obj.get("epoch") and all(
            number(x) or (isinstance(x, list) and all(map(number, x))) for x in v.values()),
        "rng": lambda v: isinstance(v, dict) and torch.is_tensor(v.get("torch")),
        "scheduler": lambda v: v is None or isinstance(v, dict),  # None: saved before schedulers were
    }
    damaged = [name for name, fine in checks.items() if not fine(obj.get(name))]
    if damaged:
        raise CheckpointError.damaged(path, f"{', '.join(damaged)} missing or malformed")
    return obj
