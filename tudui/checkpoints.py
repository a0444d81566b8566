"""Loading any Tudui checkpoint safely: train.py's, a state_dict, or the tutorial's whole-model pickles,
read without running code from them, into model.py's Tudui, loaded strictly (the tutorial's network for
files that record none). What a training checkpoint holds for resuming is training_checkpoints.py's;
writing files is runs.py's.
"""
import inspect
import itertools
import pickle
import re
import struct
import warnings
import zipfile

import torch
from torch import nn

from model import Tudui
from tudui.batches import TUTORIAL_PREPROCESS
from tudui.console import shown
from tudui.datasets import class_names
from tudui.errors import CheckpointError, SettingsError
from tudui.integrity import checkpoint_size_problem, regular_file_problem, weights_checksum


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
    inert stand-ins. Any other global in the pickle is refused by torch before it can run; a file that is
    no regular file, or too large once unpacked, is refused before torch reads it. A train.py checkpoint's
    weights must match the checksum stored with them."""
    problem = regular_file_problem(path) or checkpoint_size_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} {problem}; pass a .pth checkpoint file")
    checkpoint = torch_load(path, map_location)
    if isinstance(checkpoint, dict) and "weights_sha256" in checkpoint and isinstance(checkpoint.get("model"), dict):
        if checkpoint["weights_sha256"] != weights_checksum(checkpoint["model"]):
            raise CheckpointError(f"checkpoint {path} is damaged: its weights do not match the checksum saved with "
                                  "them; use another copy (last.pth, best.pth or an epoch file)")
    return checkpoint


def torch_load(path, map_location):
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


def num_classes_argument(network, num_classes):
    """The arguments that give NETWORK (model.py's Tudui) NUM_CLASSES outputs: (num_classes,), or () for 10
    classes when its __init__ takes no argument (as the tutorial's own model.py)."""
    if inspect.signature(network).parameters:
        return (num_classes,)
    if num_classes != 10:
        raise SettingsError(f"model.py's Tudui takes no num_classes argument, so it has CIFAR-10's 10 outputs, but "
                            f"this data has {num_classes} classes; give it one: def __init__(self, num_classes=10), "
                            "used as the last layer's outputs")
    return ()


def build_tudui(num_classes):
    """model.py's Tudui with NUM_CLASSES outputs."""
    return Tudui(*num_classes_argument(Tudui, num_classes))


class TutorialTudui(nn.Module):
    """The tutorial's network, for files that record no network (its own whole-model files and bare
    state_dicts) when model.py has changed since; model.py's Tudui is the user's to change, this is not."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, 1, 2),
                                   nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, 1, 2), nn.MaxPool2d(2), nn.Flatten(),
                                   nn.Linear(64 * 4 * 4, 64), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.model(x)


def output_counts(state_dict, classes):
    """The class counts the weights may predict, likeliest first: the last bias's size (the last layer's,
    in most networks), the count of CLASSES, CIFAR-10's 10."""
    biases = [v for k, v in state_dict.items() if k.endswith("bias") and torch.is_tensor(v) and v.dim() == 1]
    counts = ([biases[-1].shape[0]] if biases else []) + ([len(classes)] if classes else [])
    return list(dict.fromkeys(counts + [10]))


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


def first_difference(recorded, net):
    """The first line where the printed network RECORDED in a checkpoint and NET's differ, or ""."""
    if not isinstance(recorded, str):
        return ""
    pairs = itertools.zip_longest(recorded.splitlines()[1:], str(net).splitlines()[1:], fillvalue="(nothing)")
    for old, new in pairs:  # after the first line, the class's name
        if old != new:
            return f"; it was trained with `{old.strip()}` where model.py now has `{new.strip()}`"
    return ""


def build_from_state_dict(state_dict, path="checkpoint", classes=None, network=None, tutorials=False):
    """model.py's Tudui with these weights, loaded strictly; the tutorial's network instead for a file that
    records no NETWORK (its printed structure) when only that fits, or always when TUTORIALS says the file
    is the tutorial network's. A CheckpointError names a mismatch."""
    counts = output_counts(state_dict, classes)
    if counts[0] == 0:
        raise CheckpointError(f"{path} has a final layer with no outputs, so it can predict no class; "
                              "use another copy of the checkpoint")
    try:
        nets = [TutorialTudui(count) if tutorials else build_tudui(count) for count in counts]
    except SettingsError as e:
        raise CheckpointError(f"{path} predicts {counts[0]} classes, and {str(e).split(', but ')[0]}; give it a "
                              "num_classes argument: def __init__(self, num_classes=10)") from None
    if network is None:  # a file that records no network may be the tutorial's
        nets += [TutorialTudui(count) for count in counts]
    fitting = [net for net in nets if not mismatch(net, state_dict)]
    return load_weights(fitting[0] if fitting else nets[0], state_dict, path, network)


def load_weights(net, state_dict, path, network=None):
    """STATE_DICT loaded strictly into NET, or a CheckpointError: model.py changed since the checkpoint
    (what differs, and the first line where NETWORK, the network it recorded, differs), or weights that
    are not finite."""
    problem = mismatch(net, state_dict)
    if problem:
        raise CheckpointError(f"model.py has changed since {path} was trained ({problem})"
                              f"{first_difference(network, net)}; use the model.py it was trained with, or train anew")
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path} has non-finite weights (NaN or infinity) in {key}, saved from a run that "
                                  "had diverged; use a checkpoint of an earlier epoch")
    net.load_state_dict(state_dict)
    return net


def normalizing_input(net, preprocess):
    """NET, made to take ToTensor's input (floats in [0, 1]) and apply PREPROCESS's normalization itself,
    in a forward pre-hook whose mean and std are buffers left out of the state_dict."""
    if preprocess.get("mean") is None:
        return net
    for name in ("mean", "std"):
        net.register_buffer(f"input_{name}", torch.tensor(preprocess[name]).view(1, 3, 1, 1), persistent=False)
    net.register_forward_pre_hook(lambda module, args: ((args[0] - module.input_mean) / module.input_std,
                                                        *args[1:]))
    return net


class FlipAveraged(nn.Module):
    """--tta: the log of the mean of NET's class probabilities for an image and for its mirror image."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return (self.net(x).float().softmax(1) + self.net(x.flip(3)).float().softmax(1)).div_(2).log_()


def load_tudui(path, map_location="cpu", tutorials=False):
    """Load a Tudui in eval mode from any Tudui checkpoint: one written by train.py, a bare state_dict,
    or a tutorial `torch.save(tudui, ...)` file. It takes ToTensor's input, floats in [0, 1] of shape
    (N, 3, 32, 32), and applies its checkpoint's normalization itself. It carries `.classes` (names, one
    per output), `.preprocess` (that normalization), and from train.py's checkpoints `.config` (the run's
    settings), `.provenance` (what made it) and `.test_accuracy` (its epoch's), else None. Raises
    CheckpointError."""
    checkpoint = read_checkpoint(path, map_location)
    state_dict, classes, preprocess = unpack_checkpoint(checkpoint, path)
    recorded = checkpoint.get("network") if isinstance(checkpoint, dict) else None
    net = build_from_state_dict(state_dict, path, classes, recorded, tutorials)
    with torch.no_grad():
        num_classes = net.eval()(torch.zeros(1, 3, 32, 32)).shape[1]
    net.classes = [shown(name) for name in classes] if classes and len(classes) == num_classes else class_names(
        num_classes)
    net.preprocess = preprocess
    net.config, net.provenance = (checkpoint.get(key) if isinstance(checkpoint, dict) and isinstance(
        checkpoint.get(key), dict) else None for key in ("config", "provenance"))
    accuracy = checkpoint.get("test_accuracy") if isinstance(checkpoint, dict) else None
    net.test_accuracy = float(accuracy) if isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1 else None
    return normalizing_input(net, preprocess).to(map_location).eval()
