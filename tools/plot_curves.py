"""Draw test-accuracy curves from runs' metrics.jsonl files into one PNG (used for the README's picture),
with matplotlib.

    python tools/plot_curves.py --out docs/curves.png tutorial=logs_train/A/metrics.jsonl tuned=logs_train/B/metrics.jsonl
"""
import argparse
import json
from pathlib import Path


def plot(series, title, out):
    """{name: [(epoch, accuracy), ...]} as one line each, the accuracy in percent, saved as a PNG at OUT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    figure, axes = plt.subplots(figsize=(7.2, 4.2), dpi=100)
    for name, points in series.items():
        epochs, accuracies = zip(*points)
        axes.plot(epochs, accuracies, linewidth=2,
                  label=f"{name}: {accuracies[-1]:.2%} after epoch {epochs[-1]}")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set(xlabel="epoch", ylabel="test accuracy", title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", metavar="NAME=METRICS_JSONL")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="Tudui test accuracy on the real CIFAR-10 test images")
    args = p.parse_args()
    series = {}
    for item in args.runs:
        name, path = item.split("=", 1)
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        series[name] = [(r["epoch"], r["test_accuracy"]) for r in records]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot(series, args.title, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
