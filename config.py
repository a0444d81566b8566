"""The run's configuration: the two recipes, the flags and their checks, the keyword form of the flags
that train.run takes, what a resumed run takes from its checkpoint, and the learning rate of each step.
Turns flags into settings; runs nothing.
"""
import argparse
import math
import shlex
from pathlib import Path
from typing import NamedTuple

import torch

from checkpoints import damaged_checkpoint, load_training_checkpoint
from cli import OneLineErrorParser
from errors import SettingsError

# Settings that a recipe chooses. The tutorial's are the defaults; every one can be overridden by its flag.
RECIPES = {
    "tutorial": dict(optimizer="sgd", batch_size=64, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                     muon_decay=0.0, schedule="constant", warmup=0.0, augment=False, translate=2, normalize=False,
                     label_smoothing=0.0),
    "tuned": dict(optimizer="muon", batch_size=512, lr=0.08, momentum=0.9, nesterov=True, weight_decay=2e-3,
                  muon_decay=0.2, schedule="cosine", warmup=0.0, augment=True, translate=2, normalize=True,
                  label_smoothing=0.1),
}


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
    p.add_argument("--val-split", type=int, default=0, metavar="N",
                   help="hold out N training images, drawn by --seed, and pick best.pth by their accuracy "
                        "(validation); the test set is still scored every epoch")
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
    p.add_argument("--deterministic", action="store_true",
                   help="on a GPU, deterministic algorithms and no TF32: runs of one seed give equal weights, at a "
                        "cost in speed; CPU runs are bit-exact without it")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, data order and augmentation")
    p.add_argument("--log-every", type=int, default=100, help="log the train loss every N steps")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final line")
    p.add_argument("--dry-run", action="store_true",
                   help="check the data, the device, the folders and a few training steps in seconds, writing nothing")
    return p


def parse_args(argv):
    """Flags, then the recipe's settings for any recipe flag not given. On --resume the checkpoint's
    configuration is the default instead, so a resumed run trains exactly as it began."""
    parser = build_parser()
    args = parser.parse_args(argv)
    resumed = None
    if args.resume:
        resumed = load_training_checkpoint(args.resume)
        # what runs saved before those flags existed did
        saved = {"optimizer": "sgd", "muon_decay": 0.0, "val_split": 0, **resumed["config"]}
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


def keyword_argv(settings):
    """train.py's flags for SETTINGS given as keywords, each named as its flag's dest (data_dir for
    --data-dir): run(epochs=3, augment=False) is `--epochs 3 --no-augment`. Unknown names are refused."""
    actions = {action.dest: action for action in build_parser()._actions if action.option_strings}
    del actions["help"]
    argv = []
    for name, value in settings.items():
        if name not in actions:
            raise SettingsError(f"{name!r} is not a setting of train.run; the settings are: {', '.join(actions)}")
        action, flag = actions[name], actions[name].option_strings[0]
        if value is None:
            continue
        if action.nargs == 0:  # an on/off flag
            if not isinstance(value, bool):
                raise SettingsError(f"{name} takes True or False (got {value!r})")
            negative = [option for option in action.option_strings if option.startswith("--no-")]
            argv += [flag] if value else negative
        else:
            argv += [flag, str(value)]
    return argv


class Call(NamedTuple):
    """How a run was started, in its caller's words: TEXT, which checkpoints record; REAL_RUN, the same
    call without --dry-run; and how that caller resumes the run."""
    text: str
    real_run: str
    resume_template: str

    def resume(self, path):
        return self.resume_template.format(path=str(path))


def command_line_call(argv):
    real = [arg for arg in argv if arg != "--dry-run"]
    return Call(shlex.join(["python", "train.py", *argv]), shlex.join(["python", "train.py", *real]),
                "python train.py --resume {path}")


def python_call(argv):
    real = [arg for arg in argv if arg != "--dry-run"]
    return Call(f"train.main({list(argv)!r})", f"train.main({real!r})", "train.main(['--resume', {path!r}])")


def keyword_call(settings):
    def text(items):
        return "train.run(" + ", ".join(f"{k}={v!r}" for k, v in items) + ")"
    return Call(text(settings.items()), text((k, v) for k, v in settings.items() if k != "dry_run"),
                "train.run(resume={path!r})")


def saved_flags(parser, config, path):
    """A resumed run's saved configuration as flag defaults, each value checked against its flag's type
    and choices, so that a damaged one is refused here rather than failing somewhere in training."""
    machine_specific = {"device", "cuda_graph", "quiet", "resume", "evaluate", "tta", "dry_run"}
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
    settings still applied), its optimizer (whose saved state is laid out for it), its input
    normalization (the checkpoint's, which its weights learned) and its validation split (which chose
    best.pth so far)."""
    for key, how, what in (
            ("recipe", f"with --recipe {saved.get('recipe')}",
             "its recipe; flags such as --lr or --epochs still change single settings"),
            ("optimizer", f"with --optimizer {saved['optimizer']}", "its optimizer, whose saved state only fits it"),
            ("normalize", f"{'with' if saved.get('normalize') else 'without'} --normalize",
             "the input normalization its weights learned"),
            ("val_split", f"with --val-split {saved['val_split']}", "the validation split that chose its best.pth")):
        if key in saved and getattr(args, key) != saved[key]:
            raise SettingsError(f"{args.resume} was trained {how}, and a resumed run keeps {what}")


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
        (args.val_split < 0, f"--val-split must be 0 or more images (got {args.val_split})"),
        (args.dry_run and args.evaluate, "--dry-run checks a training run; leave it out with --evaluate"),
        (args.run_name is not None and not names_a_subfolder(args.run_name),
         f"--run-name must name a folder inside --logdir, such as exp1 (got {args.run_name!r})"),
        (args.tta and not args.evaluate, "--tta applies to --evaluate only"),
        (args.resume == "", "--resume needs a checkpoint path (got an empty one)"),
        (args.evaluate == "", "--evaluate needs a checkpoint path (got an empty one)"),
    ]
    for bad, message in problems:
        if bad:
            raise SettingsError(message)


def names_a_subfolder(name):
    path = Path(name)  # no anchor: on Windows, C:run and \\run are not absolute, yet LOGDIR / them leaves LOGDIR
    return name.strip() not in ("", ".") and not path.anchor and ".." not in path.parts


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


def plain_config(args):
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
