"""Draw test-accuracy curves from runs' metrics.jsonl files into one PNG (used for the README's picture).

    python bench/plot_curves.py --out docs/curves.png tutorial=logs_train/A/metrics.jsonl tuned=logs_train/B/metrics.jsonl
"""
import argparse
import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from report import curves_image  # noqa: E402


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
    Image.fromarray(curves_image(series, args.title)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
