"""The recipe ladder: from the tutorial's recipe to `--recipe tuned`, one change at a time, each step
keeping the ones before it; and, beside it, the tutorial's recipe with ReLU added to model.py (a change
of network, not of recipe). Each step trains SEEDS x EPOCHS through experiments/recipe_search.py, the ReLU
network in a copy of the project whose model.py gets an nn.ReLU() after each hidden layer (the shipped
model.py is never changed). Prints the table of docs/ladder.md and draws its picture.

    python experiments/ladder.py --data-dir ./data --dataset cifar10 --out ladder
    python experiments/ladder.py --data-dir /tmp/cifar --dataset folder --out ladder --jobs 2

--jobs N trains N runs at once, each with 2 / N threads (set OMP_NUM_THREADS for another count).
Results go to OUT/ladder.jsonl as they come; run it again to finish a stopped ladder.

The first step takes the images in the dataset's order, as the video did: CIFAR-10's files hold them in a
random order, but an image folder holds them class by class, from which a run without shuffling learns
only the last class (10%). Climb it on CIFAR-10's files (tools/cifar_copy.py writes them).
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tudui.settings import as_command  # noqa: E402

# (step, the settings it changes); each step keeps every change before it
STEPS = [
    ("tutorial, as the video trains (no shuffling)", {"shuffle": False}),
    ("+ shuffling every epoch (train.py's default)", {"shuffle": None}),
    ("+ momentum 0.9 (Nesterov), weight decay 2e-3", {"momentum": 0.9, "nesterov": True, "weight_decay": 2e-3}),
    # SGD at the tuned recipe's batch 512 and lr 0.08 diverges (docs/ladder.md): that lr is Muon's recipe's
    ("+ batch 128, lr 0.02, cosine schedule", {"batch_size": 128, "lr": 0.02, "schedule": "cosine"}),
    ("+ input normalization", {"normalize": True}),
    ("+ augmentation (flips, 2 px shifts)", {"augment": True}),
    ("+ label smoothing 0.1", {"label_smoothing": 0.1}),
    ("+ Muon for the hidden layers: --recipe tuned", {"optimizer": "muon", "muon_decay": 0.2, "batch_size": 512,
                                                      "lr": 0.08}),
]
RELU = "tutorial recipe, ReLU after each hidden layer of model.py"


def ladder():
    """[(step, its settings: the changes of this step and every one before, the flags it adds)]."""
    settings, steps = {}, []
    for name, changes in STEPS:
        settings = {k: v for k, v in {**settings, **changes}.items() if v is not None}
        steps.append((name, settings, flags(changes)))
    return steps


def flags(settings):
    """train.py's flags for SETTINGS, as one string; a setting of None is its flag's default form."""
    given = {k: v for k, v in settings.items() if v is not None}
    defaults = [f"--{k.replace('_', '-')}" for k, v in settings.items() if v is None]
    return shlex.join(defaults + shlex.split(as_command(given, from_command_line=True))[2:])


def with_relu(model_source):
    """MODEL_SOURCE (model.py's text) with an nn.ReLU() after each Conv2d and Linear line but the last."""
    lines = model_source.splitlines(keepends=True)
    layers = [i for i, line in enumerate(lines) if re.match(r"\s*nn\.(Conv2d|Linear)\(.*\),\s*$", line)]
    if len(layers) < 2:
        raise SystemExit("model.py has no nn.Sequential of Conv2d and Linear lines to add ReLU to")
    for i in reversed(layers[:-1]):
        indent = re.match(r"\s*", lines[i]).group()
        lines.insert(i + 1, f"{indent}nn.ReLU(),\n")
    return "".join(lines)


def relu_project(folder):
    """A copy of the project in FOLDER whose model.py has ReLU added; returns FOLDER."""
    shutil.copytree(ROOT, folder, ignore=shutil.ignore_patterns(".git", ".venv", "data", "logs_train", "__pycache__",
                                                                 "*.pth", "*.jsonl"), dirs_exist_ok=True)
    (folder / "model.py").write_text(with_relu((ROOT / "model.py").read_text()))
    return folder


def search(root, variants, args):
    command = [sys.executable, str(root / "bench" / "recipe_search.py"), "--dataset", args.dataset, "--data-dir",
               args.data_dir, "--seeds", *map(str, args.seeds), "--epochs", str(args.epochs), "--jobs",
               str(args.jobs), "--out", str(args.out / "ladder.jsonl"), "--skip-done"]
    for name, settings, _ in variants:
        command += ["--variant", f"{name}={flags(settings)}"]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, 2 // args.jobs)))
    subprocess.run(command, check=True, env=env)


def rows(results, compared_with):
    """One row per name of COMPARED_WITH (name: the name its gain is over, or None): the mean test accuracy
    of its seeds, their spread, the gain, and the seconds per epoch (training and test pass; the median
    run's, which one run slowed by other work on the machine does not move)."""
    table = {}
    for name, before in compared_with.items():
        runs = [r for r in results if r["variant"] == name]
        if not runs:  # a ladder still being climbed
            continue
        accs = [r["test_accuracy"] for r in runs]
        mean = statistics.mean(accs)
        table[name] = {"name": name, "flags": runs[0]["flags"], "seeds": len(runs), "mean": mean, "min": min(accs),
                       "max": max(accs), "gain": mean - table[before]["mean"] if before in table else None,
                       "s_per_epoch": statistics.median(r["loop_s"] / r["epochs"] for r in runs)}
    return list(table.values())


def markdown(table, added):
    """The table of docs/ladder.md; ADDED: each row's name to the flags its step adds."""
    lines = ["| step | adds | seeds | test accuracy, mean (min–max) | gain | s/epoch, median |",
             "|---|---|---|---|---|---|"]
    for row in table:
        gain = "" if row["gain"] is None else f"{row['gain'] * 100:+.2f} points"
        lines.append(f"| {row['name']} | `{added[row['name']]}` | {row['seeds']} | {row['mean']:.2%} "
                     f"({row['min']:.2%}–{row['max']:.2%}) | {gain} | {row['s_per_epoch']:.1f} |")
    return "\n".join(lines)


def draw(table, path, title):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.55 * len(table) + 1.2), layout="constrained")
    y = list(range(len(table)))[::-1]
    means = [row["mean"] * 100 for row in table]
    spread = [[m - row["min"] * 100 for m, row in zip(means, table)], [row["max"] * 100 - m for m, row in
                                                                         zip(means, table)]]
    colors = ["tab:orange" if row["name"] == RELU else "tab:blue" for row in table]
    ax.barh(y, means, xerr=spread, color=colors, capsize=3)
    for yi, mean, row in zip(y, means, table):
        ax.text(row["max"] * 100 + 1, yi, f"{mean:.1f}%", va="center")
    ax.set_yticks(y, [row["name"] for row in table])
    ax.set_xlim(0, 100)
    ax.set_xlabel("test accuracy, %, mean of the seeds (bars: min–max)")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "folder"])
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("ladder"), help="folder for ladder.jsonl and ladder.png")
    p.add_argument("--report", action="store_true", help="train nothing: the table and picture of the runs in OUT")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_dir = os.path.abspath(args.data_dir)
    steps = ladder()
    if not args.report:
        search(ROOT, steps, args)
        with tempfile.TemporaryDirectory() as copy:
            search(relu_project(Path(copy)), [(RELU, steps[1][1], "")], args)
    report(steps, args)


def report(steps, args):
    """Print the table and draw the picture of the runs in OUT/ladder.jsonl."""
    wanted = {name: shlex.split(flags(settings)) for name, settings, _ in [*steps, (RELU, steps[1][1], "")]}
    results = [r for r in map(json.loads, (args.out / "ladder.jsonl").read_text().splitlines())
               if wanted.get(r["variant"]) == r["flags"] and r["epochs"] == args.epochs and r["seed"] in args.seeds]
    names = [name for name, _, _ in steps]
    table = rows(results, {**dict(zip(names, [None] + names)), RELU: names[1]})
    print(markdown(table, {**{name: added for name, _, added in steps}, RELU: "nn.ReLU() in model.py"}))
    draw(table, args.out / "ladder.png", f"From the tutorial's recipe to --recipe tuned, {args.epochs} epochs a run, "
                                         f"seeds {', '.join(map(str, args.seeds))}")
    print(f"picture: {args.out / 'ladder.png'}")


if __name__ == "__main__":
    main()
