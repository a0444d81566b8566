"""Train recipe variants over several seeds and report test accuracy, mean and spread, per variant: of
last.pth (the run's final weights) and of best.pth (its best epoch, chosen on the validation images with
--val-split, else on the test set itself), and best.pth's validation accuracy.

Each run is a real `train.py` run (in this process, to skip the start-up), then `--evaluate --tta` on its
last checkpoint. Every result is appended to --out as one JSON line as soon as it exists.

    python experiments/recipe_search.py --data-dir /tmp/cifar --seeds 0 1 2 --epochs 10 \\
        --variant "tuned=--recipe tuned" --variant "b64=--recipe tuned --batch-size 64 --lr 0.02 --schedule cosine"

--screen K first runs every variant with the first seed only, then the best K (by test accuracy) with
the other seeds. --jobs N runs N trainings at once (a GPU has room for many runs of this small network);
their times are then not solo timings. --skip-done keeps the results already in --out (same variant
name, flags, seed and epochs) and runs only the others, so a stopped search goes on where it stopped.
"""
import argparse
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from tudui.errors import TuduiError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from cifar_copy import copy_environment  # noqa: E402


def run_once(flags, seed, epochs, data_dir, dataset, logdir):
    name = f"s{seed}-e{epochs}-{time.monotonic_ns()}"
    common = ["--dataset", dataset, "--data-dir", data_dir, "--no-download", "--logdir", logdir, "--quiet"]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            result = train.main([*common, *flags, "--seed", str(seed), "--epochs", str(epochs), "--run-name", name])
        except TuduiError as e:  # a diverged run (non-finite loss) is a result too
            return {"failed": str(e), "test_accuracy": 0.0, "best_test_accuracy": 0.0, "best_val_accuracy": None,
                    "tta_accuracy": 0.0, "train_s": 0.0, "loop_s": 0.0, "wall_s": time.perf_counter() - started}
        wall = time.perf_counter() - started
        tta = train.main(["--evaluate", str(result.last_path), "--tta", "--dataset", dataset, "--data-dir", data_dir,
                          "--no-download"])
    history = result.history
    chosen_by = history.get("val_accuracy") or history["test_accuracy"]
    best = chosen_by.index(max(chosen_by))  # the first best epoch, as train.py picks best.pth
    return {"test_accuracy": result.test_accuracy, "best_test_accuracy": history["test_accuracy"][best],
            "best_val_accuracy": history["val_accuracy"][best] if "val_accuracy" in history else None,
            "tta_accuracy": tta.test_accuracy, "train_s": sum(history["train_seconds"]),
            "loop_s": sum(history["epoch_seconds"]), "wall_s": wall}


def summarize(results):
    by_variant = {}
    for r in results:
        by_variant.setdefault((r["variant"], r["epochs"]), []).append(r)
    rows = []
    for (variant, epochs), runs in by_variant.items():
        accs = [r["test_accuracy"] for r in runs]
        best, val = [r["best_test_accuracy"] for r in runs], [r["best_val_accuracy"] for r in runs]
        rows.append({"variant": variant, "flags": runs[0]["flags"], "epochs": epochs, "seeds": len(runs),
                     "failed": sum("failed" in r for r in runs),
                     "mean": statistics.mean(accs), "min": min(accs), "max": max(accs),
                     "best_mean": statistics.mean(best), "best_min": min(best), "best_max": max(best),
                     "val_mean": statistics.mean(val) if None not in val else None,
                     "tta_mean": statistics.mean(r["tta_accuracy"] for r in runs),
                     "train_s": statistics.median(r["train_s"] for r in runs)})
    return sorted(rows, key=lambda row: -row["mean"])


def print_table(rows):
    print("| variant | epochs | seeds | last.pth test acc, mean | min-max | best.pth test acc, mean (min-max) | "
          "best.pth val acc, mean | last.pth with --tta | train s (median) | flags |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    print("(failed runs, which stopped on a non-finite loss, count as 0%)")
    for row in rows:
        seeds = f"{row['seeds']} ({row['failed']} failed)" if row["failed"] else row["seeds"]
        val = f"{row['val_mean']:.2%}" if row["val_mean"] is not None else "(no --val-split)"
        print(f"| {row['variant']} | {row['epochs']} | {seeds} | {row['mean']:.2%} | "
              f"{row['min']:.2%}-{row['max']:.2%} | {row['best_mean']:.2%} ({row['best_min']:.2%}-{row['best_max']:.2%}) "
              f"| {val} | {row['tta_mean']:.2%} | {row['train_s']:.1f} | `{' '.join(row['flags'])}` |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "folder"])
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=FLAGS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, nargs="+", default=[10])
    p.add_argument("--screen", type=int, metavar="K", help="first seed for all variants, other seeds for the best K")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once, each in its own process")
    p.add_argument("--out", default="recipe_results.jsonl")
    p.add_argument("--skip-done", action="store_true", help="keep the results already in --out; run the others")
    args = p.parse_args()
    if args.dataset == "cifar10":  # a copy made by tools/cifar_copy.py is accepted by its md5s
        os.environ.update(copy_environment(args.data_dir))  # in the spawned workers too
    variants = {}
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        variants[name] = shlex.split(flags)
    results = []
    if args.skip_done and os.path.exists(args.out):
        with open(args.out) as f:
            results = [r for r in map(json.loads, f)
                       if variants.get(r["variant"]) == r["flags"] and r["epochs"] in args.epochs]
    already = {(r["variant"], r["seed"], r["epochs"]) for r in results}

    def run_all(names, seeds, logdir):
        runs = {pool.submit(run_once, variants[name], seed, epochs, args.data_dir, args.dataset, logdir):
                {"variant": name, "flags": variants[name], "seed": seed, "epochs": epochs}
                for epochs in args.epochs for name in names for seed in seeds if (name, seed, epochs) not in already}
        for done in concurrent.futures.as_completed(runs):
            result = runs[done] | done.result()
            results.append(result)
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
            if "failed" in result:
                print(f"{result['variant']} seed {result['seed']} epochs {result['epochs']}: {result['failed']}")
                continue
            val = f", val {result['best_val_accuracy']:.2%}" if result["best_val_accuracy"] is not None else ""
            print(f"{result['variant']} seed {result['seed']} epochs {result['epochs']}: last.pth "
                  f"{result['test_accuracy']:.2%} (tta {result['tta_accuracy']:.2%}), best.pth "
                  f"{result['best_test_accuracy']:.2%}{val}, train {result['train_s']:.1f} s", flush=True)

    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with tempfile.TemporaryDirectory() as logdir, \
            concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
        if args.screen:
            run_all(list(variants), args.seeds[:1], logdir)
            best = [row["variant"] for row in summarize(results)[:args.screen]]
            run_all(best, args.seeds[1:], logdir)
        else:
            run_all(list(variants), args.seeds, logdir)
    print_table(summarize(results))


if __name__ == "__main__":
    main()
