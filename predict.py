"""Classify images with any Tudui checkpoint: one written by train.py, a state_dict, or the tutorial's
`torch.save(tudui, ...)` files. Loading never runs code from the checkpoint.

    python predict.py --checkpoint logs_train/RUN/best.pth dog.png airplane.png
    python predict.py --checkpoint tudui_29_gpu.pth --top-k 3 --json *.png

Exit code: 0 when every image was classified, 1 when some could not be read, 2 for a bad checkpoint or flags.
"""
import argparse
import json
import sys
import warnings

import torch

from checkpoints import load_tudui
from cli import OneLineErrorParser, run_cli
from data import decode_image, normalizer, to_input
from devices import pick_device
from errors import DataError, SettingsError, TuduiError


def build_parser():
    p = OneLineErrorParser(prog="predict.py", description="Classify images with a Tudui checkpoint.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format and size PIL reads)")
    p.add_argument("--checkpoint", required=True, help="a .pth file: train.py checkpoint, state_dict or tutorial model")
    p.add_argument("--top-k", type=int, default=1, help="how many classes to list per image")
    p.add_argument("--json", action="store_true", help="one JSON object per image, for scripts")
    p.add_argument("--tta", action="store_true", help="average the image's and its mirror image's predictions")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu")
    return p


@torch.no_grad()
def classify(net, image_u8, device, tta=False):
    """Class probabilities for one uint8 (3, 32, 32) image, preprocessed exactly as in training."""
    x = to_input(image_u8.unsqueeze(0).to(device), normalizer(net.preprocess, device))
    probs = net(x).float().softmax(1)
    if tta:
        probs = (probs + net(x.flip(3)).float().softmax(1)) / 2
    return probs[0].cpu()


def predict(argv=None):
    """Returns (results, exit_code); each result is {"path", "predictions"} or {"path", "error"}."""
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise SettingsError(f"--top-k must be at least 1 (got {args.top_k})")
    device = pick_device(args.device)
    net = load_tudui(args.checkpoint, map_location="cpu").to(device)
    top_k = min(args.top_k, len(net.classes))
    results = []
    for path in args.images:
        try:
            probs = classify(net, torch.from_numpy(decode_image(path)), device, args.tta)
        except DataError as e:
            results.append({"path": path, "error": str(e)})
            print(json.dumps(results[-1]) if args.json else f"error: {e}", file=sys.stdout if args.json else sys.stderr)
            continue
        values, indices = probs.topk(top_k)
        predictions = [{"class": net.classes[i], "probability": round(v, 6)}
                       for v, i in zip(values.tolist(), indices.tolist())]
        results.append({"path": path, "predictions": predictions})
        if args.json:
            print(json.dumps(results[-1]))
        else:
            print(f"{path}: " + ", ".join(f"{p['class']} {p['probability']:.1%}" for p in predictions))
    return results, (1 if any("error" in r for r in results) else 0)


def main(argv=None):
    from PIL import Image

    warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a bad image, not a warning
    try:
        _, code = predict(argv)
    except TuduiError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


if __name__ == "__main__":
    sys.exit(run_cli(main))
