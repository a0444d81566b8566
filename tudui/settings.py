"""A run's settings in one place: the Settings dataclass, whose fields are train.py's flags and train.run's
keywords, the two recipes, what a resumed run takes from its checkpoint, the checks, and the lr schedule's factor at
each step. Turns flags into settings; runs nothing."""
import argparse
import dataclasses
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tudui.console import OneLineErrorParser
from tudui.errors import CheckpointError, SettingsError

# Settings that a recipe chooses. The tutorial's are the defaults; every one can be overridden by its flag.
RECIPES = {
    "tutorial": dict(optimizer="sgd", batch_size=64, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                     muon_decay=0.0, schedule="constant", warmup=0.0, augment=False, translate=2, normalize=False,
                     label_smoothing=0.0),
    "tuned": dict(optimizer="muon", batch_size=512, lr=0.08, momentum=0.9, nesterov=True, weight_decay=2e-3,
                  muon_decay=0.2, schedule="cosine", warmup=0.0, augment=True, translate=2, normalize=True,
                  label_smoothing=0.1),
}


def flag(default=None, help="", choices=None, metavar=None):
    return field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar})


@dataclass
class Settings:
    """Everything a run is told: each field is a flag of train.py (data_dir is --data-dir) and a keyword of
    train.run; None in a recipe setting means the recipe's value."""
    recipe: str = flag("tutorial", "training recipe; the flags below marked 'recipe' override it",
                       choices=sorted(RECIPES))
    epochs: int = flag(10, "total epochs (with --resume: the total to reach)")
    optimizer: str = flag(None, "muon: Muon for the hidden layers' weights at lr x 0.25, SGD for the rest; "
                                "recipe: sgd (tutorial), muon (tuned)", choices=["sgd", "muon"])
    batch_size: int = flag(None, "images per training step; recipe: 64 (tutorial), 512 (tuned)")
    lr: float = flag(None, "(peak) learning rate; recipe: 0.01 (tutorial), 0.08 (tuned)")
    momentum: float = flag(None, "recipe: 0 (tutorial), 0.9 (tuned)")
    nesterov: bool = flag(None, "recipe: off (tutorial), on (tuned)")
    weight_decay: float = flag(None, "recipe: 0 (tutorial), 2e-3 (tuned)")
    muon_decay: float = flag(None, "with --optimizer muon: decoupled weight decay on its hidden weights, each step "
                                   "scaling them by 1 - Muon's lr x R; recipe: 0 (tutorial), 0.2 (tuned, 0 with "
                                   "--optimizer sgd)", metavar="R")
    schedule: str = flag(None, "learning-rate schedule, per step; onecycle warms up for 30%% of the steps, then "
                               "anneals (as torch's OneCycleLR); recipe: constant (tutorial), cosine (tuned)",
                         choices=["constant", "cosine", "onecycle"])
    warmup: float = flag(None, "fraction of steps spent warming the lr up from 0; recipe: 0")
    augment: bool = flag(None, "random flips and shifts of each training batch; recipe: off (tutorial), on (tuned)")
    translate: int = flag(None, "with --augment: largest shift in pixels; recipe: 2")
    normalize: bool = flag(None, "per-channel mean/std normalization; recipe: off (tutorial), on (tuned)")
    label_smoothing: float = flag(None, "recipe: 0 (tutorial), 0.1 (tuned)")
    shuffle: bool = flag(True, "reshuffle the training images every epoch; --no-shuffle takes them in the dataset's "
                               "order every epoch, as the tutorial did (an image folder's order is class by class)")
    val_split: int = flag(0, "hold out N training images, drawn by --seed, and pick best.pth by their accuracy "
                             "(validation); the test set is still scored every epoch", metavar="N")
    dataset: str = flag("cifar10", "cifar10: torchvision's CIFAR-10 in --data-dir; folder: DIR/train/<class>/*, "
                                   "DIR/test/<class>/*", choices=["cifar10", "folder"])
    data_dir: str = flag("./data", "where the dataset is (or is downloaded to)")
    no_download: bool = flag(False, "fail instead of downloading CIFAR-10")
    skip_bad_images: bool = flag(False, "with --dataset folder: train on the images that can be read, and list the "
                                        "others in the run's config.json, instead of stopping at them")
    logdir: str = flag("./logs_train", "TensorBoard folder; each run gets LOGDIR/RUN_NAME")
    run_name: str = flag(None, "default: a timestamp, or the resumed run's name")
    ckpt_dir: str = flag(None, "default: the run's folder, LOGDIR/RUN_NAME")
    resume: str = flag(None, "continue from a checkpoint written by this script; auto, with --run-name: from that "
                             "run's newest checkpoint, or start it if it has none (the same command goes on after a "
                             "preemption)", metavar="PATH")
    evaluate: str = flag(None, "only evaluate CHECKPOINT on the test split", metavar="CHECKPOINT")
    tta: bool = flag(False, "with --evaluate: average predictions over the image and its flip")
    mistakes: str = flag(None, "with --evaluate: save the test images it got most confidently wrong, each with its "
                               "true class, the class predicted and its probability, as a PNG", metavar="PATH")
    device: str = flag("auto", "auto: cuda, then mps, then cpu", choices=["auto", "cpu", "cuda", "mps"])
    amp: bool = flag(False, "bfloat16 autocast: fast on GPUs and on CPUs with native bf16 (AVX-512 BF16), slow on "
                            "others")
    cuda_graph: bool = flag(True, "on one CUDA GPU, replay each training step as a recorded CUDA graph")
    deterministic: bool = flag(False, "on a GPU, deterministic algorithms and no TF32: runs of one seed give equal "
                                      "weights, at a cost in speed; CPU runs are bit-exact without it")
    seed: int = flag(0, "seeds the initial weights, data order and augmentation")
    log_every: int = flag(100, "log the train loss every N steps")
    save_every: int = flag(1, "keep tudui_epoch_N.pth every N epochs, and the last epoch's; last.pth and best.pth "
                              "are saved every epoch", metavar="N")
    quiet: bool = flag(False, "print only errors and the final line")
    dry_run: bool = flag(False, "check the data, the device, the folders and a few training steps in seconds, "
                                "writing nothing")


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
ON_OFF_BY_RECIPE = {name for name, f in FIELDS.items() if f.type is bool and f.default is None}
# Settings of this machine and this call, which a resumed run takes from its own flags, never the checkpoint
MACHINE_SPECIFIC = {"device", "cuda_graph", "quiet", "resume", "evaluate", "tta", "mistakes", "dry_run"}
# What runs saved before these settings existed did
OLDER_RUNS_DID = {"optimizer": "sgd", "muon_decay": 0.0, "val_split": 0}


def build_parser():
    """train.py's flags, one per Settings field. Flags not given are left out of the namespace, so that what the
    user said can be told from the defaults."""
    p = OneLineErrorParser(prog="train.py", description="Train the tutorial's Tudui CNN on CIFAR-10.",
                           argument_default=argparse.SUPPRESS)
    for name, f in FIELDS.items():
        shown = f" (default: {f.default})" if f.default is not None and f.type is not bool else ""
        options = dict(help=f.metadata["help"] + shown)
        if f.type is bool:
            on_off = name in ON_OFF_BY_RECIPE or f.default  # --augment / --no-augment
            options["action"] = argparse.BooleanOptionalAction if on_off else "store_true"
        else:
            options.update(type=f.type, choices=f.metadata["choices"], metavar=f.metadata["metavar"])
        p.add_argument("--" + name.replace("_", "-"), **options)
    return p


def command_line_settings(argv):
    """The settings the command line ARGV gives: a dict of only those it names."""
    return vars(build_parser().parse_args(argv))


def check_keywords(given):
    """Keyword settings (train.run's) checked as the command line would check their flags."""
    for name, value in given.items():
        if name not in FIELDS:
            raise SettingsError(f"{name!r} is not a setting of train.run; the settings are: {', '.join(FIELDS)}")
        if value is not None and not fits(name, value):
            kind = {bool: "True or False", int: "a whole number", float: "a number", str: "text"}[FIELDS[name].type]
            choices = FIELDS[name].metadata["choices"]
            raise SettingsError(f"{name} takes {f'one of {choices}' if choices else kind} (got {value!r})")
    return {name: value for name, value in given.items() if value is not None}


def fits(name, value):
    """Whether VALUE is one that setting NAME's flag could have set."""
    kind, choices = FIELDS[name].type, FIELDS[name].metadata["choices"]
    if choices is not None:
        return value in choices
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, {float: (int, float), str: (str, os.PathLike)}.get(kind, kind))


def resolve(given, resumed=None):
    """Settings from GIVEN (what the user said); the rest from RESUMED's saved settings, then the recipe, then the
    defaults. Checked."""
    saved = saved_settings(resumed, given["resume"]) if resumed else {}
    paths_as_text = {k: os.fspath(v) for k, v in given.items() if isinstance(v, os.PathLike)}
    settings = Settings(**{**saved, **given, **paths_as_text})
    if resumed:
        refuse_changed_foundations(settings, saved)
    if settings.optimizer == "sgd" and settings.muon_decay is None:
        settings.muon_decay = 0.0  # the recipe's decay is for Muon's weights, which an SGD run does not have
    for key, value in RECIPES[settings.recipe].items():
        if getattr(settings, key) is None:
            setattr(settings, key, value)
    check(settings)
    return settings


def saved_settings(checkpoint, path):
    """A resumed run's saved settings, each checked against its flag's type and choices, so that a damaged one is
    refused here."""
    saved = {**OLDER_RUNS_DID, **checkpoint["config"]}
    kept = {}
    for key, value in saved.items():
        if key not in FIELDS or key in MACHINE_SPECIFIC:
            continue
        if value is not None and not fits(key, value):
            raise CheckpointError.damaged(path, f"its configuration has {key} = {value!r}")
        kept[key] = value
    return kept


def refuse_changed_foundations(settings, saved):
    """A resumed run keeps its recipe (config.json names it), its optimizer (its saved state fits no other), its
    input normalization (which its weights learned) and its validation split (which chose its best.pth)."""
    for key, how, what in (
            ("recipe", f"with --recipe {saved.get('recipe')}",
             "its recipe; flags such as --lr or --epochs still change single settings"),
            ("optimizer", f"with --optimizer {saved['optimizer']}", "its optimizer, whose saved state only fits it"),
            ("normalize", f"{'with' if saved.get('normalize') else 'without'} --normalize",
             "the input normalization its weights learned"),
            ("val_split", f"with --val-split {saved['val_split']}", "the validation split that chose its best.pth")):
        if key in saved and getattr(settings, key) != saved[key]:
            raise SettingsError(f"{settings.resume} was trained {how}, and a resumed run keeps {what}")


FLOAT32_MAX = torch.finfo(torch.float32).max  # the optimizer multiplies float32 weights by --lr and --weight-decay


def check(s):
    problems = [
        (s.epochs < 1, f"--epochs must be at least 1 (got {s.epochs})"),
        (s.batch_size < 1, f"--batch-size must be at least 1 (got {s.batch_size})"),
        (not 0 < s.lr <= FLOAT32_MAX, f"--lr must be a positive number up to {FLOAT32_MAX:.3g} (got {s.lr})"),
        (not 0 <= s.momentum < 1, f"--momentum must be in [0, 1) (got {s.momentum})"),
        (s.nesterov and s.momentum == 0, "--nesterov needs --momentum above 0"),
        (not 0 <= s.weight_decay <= FLOAT32_MAX,
         f"--weight-decay must be 0 or more, up to {FLOAT32_MAX:.3g} (got {s.weight_decay})"),
        (not 0 <= s.muon_decay <= FLOAT32_MAX,
         f"--muon-decay must be 0 or more, up to {FLOAT32_MAX:.3g} (got {s.muon_decay})"),
        (s.muon_decay > 0 and s.optimizer != "muon", "--muon-decay applies to --optimizer muon only"),
        (not 0 <= s.translate <= 16, f"--translate must be 0 to 16 pixels (got {s.translate})"),
        (not 0 <= s.warmup < 1, f"--warmup must be a fraction in [0, 1) (got {s.warmup})"),
        (not 0 <= s.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {s.label_smoothing})"),
        (not 0 <= s.seed < 2**32, f"--seed must be 0 to {2**32 - 1} (got {s.seed})"),
        (s.log_every < 1, f"--log-every must be at least 1 (got {s.log_every})"),
        (s.save_every < 1, f"--save-every must be at least 1 (got {s.save_every})"),
        (s.val_split < 0, f"--val-split must be 0 or more images (got {s.val_split})"),
        (s.dry_run and s.evaluate, "--dry-run checks a training run; leave it out with --evaluate"),
        (s.run_name is not None and not names_a_subfolder(s.run_name),
         f"--run-name must name a folder inside --logdir, such as exp1 (got {s.run_name!r})"),
        (s.tta and not s.evaluate, "--tta applies to --evaluate only"),
        (s.mistakes is not None and not s.evaluate, "--mistakes applies to --evaluate only"),
        (s.mistakes is not None and not str(s.mistakes).lower().endswith(".png"),
         f"--mistakes names the PNG file to write, ending in .png (got {s.mistakes!r})"),
        (s.resume == "", "--resume needs a checkpoint path (got an empty one)"),
        (s.evaluate == "", "--evaluate needs a checkpoint path (got an empty one)"),
    ]
    for bad, message in problems:
        if bad:
            raise SettingsError(message)


def names_a_subfolder(name):
    path = Path(name)  # no anchor: on Windows, C:run and \\run are not absolute, yet LOGDIR / them leaves LOGDIR
    return name.strip() not in ("", ".") and not path.anchor and ".." not in path.parts


def as_command(given, from_command_line, processes=1, only=False, **changes):
    """How the user would start a run of the settings GIVEN with CHANGES (None drops one; ONLY: CHANGES alone):
    `python train.py --flag value ...` (`torchrun --nproc_per_node=N train.py ...` for N PROCESSES), or
    `train.run(name=value, ...)` from Python."""
    given = {k: v for k, v in {**({} if only else given), **changes}.items() if v is not None}
    if not from_command_line:
        return "train.run(" + ", ".join(f"{k}={v!r}" for k, v in given.items()) + ")"
    argv = []
    for name, value in given.items():
        option = "--" + name.replace("_", "-")
        if FIELDS[name].type is bool:
            argv.append(option if value else "--no-" + option[2:])
        else:
            argv += [option, str(value)]
    if processes == 1:
        return shlex.join(["python", "train.py", *argv])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    nodes = [f"--nnodes={processes // per_node}"] if per_node != processes else []
    return shlex.join(["torchrun", *nodes, f"--nproc_per_node={per_node}", "train.py", *argv])


def lr_schedule(s, total_steps):
    """--schedule after --warmup as the factor of the lr at each 0-based step, for LambdaLR: a pure function of the
    step, which a resumed run recomputes for its own --epochs and --batch-size."""
    warmup = int(s.warmup * total_steps)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if s.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if s.schedule == "onecycle":  # torch.optim.lr_scheduler.OneCycleLR's defaults, cosine both ways
            start, end = 1 / 25, 1 / 25 / 1e4
            if progress < 0.3:
                return start + (1 - start) * (1 - math.cos(math.pi * progress / 0.3)) / 2
            return end + (1 - end) * (1 + math.cos(math.pi * (progress - 0.3) / 0.7)) / 2
        return 1.0
    return factor


def plain(settings):
    """The settings as a dict of plain values, as checkpoints and config.json record them."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}
