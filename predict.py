"""Classify images with any Tudui checkpoint: one written by train.py, a state_dict, or the tutorial's
`torch.save(tudui, ...)` files. Loading never runs code from the checkpoint. Imports no training code.

    python predict.py dog.png                    # with the weights that come with the project
    python predict.py --checkpoint logs_train/RUN/best.pth dog.png airplane.png
    python predict.py --checkpoint tudui_29_gpu.pth --top-k 3 --json *.png

From Python: `predict.predict(image, "best.pth", top_k=3)`, the image a path, a PIL image or a tensor.
Exit code: 0 when every image was classified, 1 when some could not be read, 2 for a bad checkpoint or flags.
"""
import argparse
import json
import sys
import warnings

import torch

from tudui.batches import to_input
from tudui.checkpoints import FlipAveraged, class_names, load_tudui
from tudui.console import OneLineErrorParser, run_cli, shown
from tudui.images import image_pixels
from tudui.devices import pick_device
from tudui import SHIPPED_WEIGHTS
from tudui.errors import CheckpointError, DataError, SettingsError
from tudui.report import describe_checkpoint


def build_parser():
    p = OneLineErrorParser(prog="predict.py", description="Classify images with a Tudui checkpoint.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format and size PIL reads)")
    p.add_argument("--checkpoint", help="a .pth file: train.py checkpoint, state_dict or tutorial model (default: "
                                        "the weights that come with the project, --recipe tuned, 50 epochs)")
    p.add_argument("--top-k", type=int, default=1, help="how many classes to list per image")
    p.add_argument("--json", action="store_true", help="one JSON object per image, for scripts")
    p.add_argument("--tta", action="store_true", help="average the image's and its mirror image's predictions")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu")
    return p


def shipped_weights():
    """The path of the trained weights that come with the project, the tutorial network's (loaded into it
    whatever model.py holds); CheckpointError when they are missing."""
    if not SHIPPED_WEIGHTS.is_file():
        raise CheckpointError(f"the shipped weights {SHIPPED_WEIGHTS} are missing from this copy of the project; "
                              "pass --checkpoint, or make them with: python tools/ship_weights.py")
    return SHIPPED_WEIGHTS


@torch.no_grad()
def classify(net, image, device, tta=False):
    """Class probabilities for one (3, 32, 32) image, uint8 or on the 0-1 scale, given to NET as ToTensor
    gives it (a network load_tudui returned applies its checkpoint's normalization itself)."""
    return (FlipAveraged(net) if tta else net)(to_input(image.unsqueeze(0).to(device))).float().softmax(1)[0].cpu()


def top_classes(net, image, device, top_k, tta=False):
    """[{"class", "probability"}, ...] of IMAGE (anything images.image_pixels takes), most likely first."""
    probabilities = classify(net, image_pixels(image), device, tta)
    classes = getattr(net, "classes", None) or class_names(len(probabilities))
    values, indices = probabilities.topk(min(top_k, len(classes)))
    return [{"class": classes[i], "probability": round(v, 6)} for v, i in zip(values.tolist(), indices.tolist())]


def predict(images, checkpoint=None, top_k=1, tta=False, device="auto"):
    """The TOP_K most likely classes of an image, [{"class", "probability"}, ...]; of each image when
    IMAGES is a list. An image is a file path, a PIL image, or a (3, H, W) tensor, uint8 or float from 0
    to 1 (as ToTensor gives). CHECKPOINT is any Tudui checkpoint's path (None: the shipped weights), or a
    network: one load_tudui returned, or any other, which gets the image as ToTensor gives it and is in
    eval mode for the call alone. Raises CheckpointError, DataError or SettingsError with the command line's
    one-line messages."""
    if top_k < 1:
        raise SettingsError(f"--top-k must be at least 1 (got {top_k})")
    device = pick_device(device)
    net = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_tudui(
        checkpoint or shipped_weights(), map_location="cpu", tutorials=checkpoint is None)
    was_training = net.training
    net.to(device).eval()
    try:
        if isinstance(images, (list, tuple)):
            return [top_classes(net, image, device, top_k, tta) for image in images]
        return top_classes(net, images, device, top_k, tta)
    finally:
        net.train(was_training)


def main(argv=None):
    """predict.py's command line; returns its exit code. The first line says what made the checkpoint. An
    image that cannot be read is one error line and the others are still classified; a bad checkpoint or
    flag raises."""
    from PIL import Image

    warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a bad image, not a warning
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise SettingsError(f"--top-k must be at least 1 (got {args.top_k})")
    device = pick_device(args.device)
    path = args.checkpoint or shipped_weights()
    net = load_tudui(path, map_location="cpu", tutorials=args.checkpoint is None).to(device)
    # what made the checkpoint; on stderr with --json, where stdout holds one JSON object per image
    about = sys.stderr if args.json else sys.stdout
    if args.checkpoint is None:
        config, accuracy = net.config or {}, net.test_accuracy
        print(f"no --checkpoint: using the weights shipped with the project, {path} (--recipe "
              f"{config.get('recipe')}, {config.get('epochs')} epochs"
              f"{f', {accuracy:.2%} test accuracy' if accuracy is not None else ''}); pass --checkpoint for your own",
              file=about)
    print(describe_checkpoint(path, net.provenance), file=about)
    failed = False
    for path in args.images:
        try:
            predictions = top_classes(net, path, device, args.top_k, args.tta)
        except DataError as e:
            failed = True
            print(json.dumps({"path": path, "error": str(e)}) if args.json else f"error: {e}",
                  file=sys.stdout if args.json else sys.stderr)
            continue
        if args.json:
            print(json.dumps({"path": path, "predictions": predictions}))
        else:
            print(f"{shown(path)}: " + ", ".join(f"{p['class']} {p['probability']:.1%}" for p in predictions))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
