"""The test images a network got most confidently wrong, and the gallery that shows them: each image with
its true class, the class predicted and that prediction's probability. TensorBoard gets it every epoch;
`--evaluate CHECKPOINT --mistakes PATH` saves it as a PNG. Picks and draws; trains and scores nothing.

Drawn with matplotlib's object API (a Figure on an Agg canvas, never pyplot), which is safe on the
thread that draws TensorBoard's pictures beside training.
"""
import io
import math
import textwrap

import numpy as np

from tudui.console import shown
from tudui.files import atomic_write

MISTAKES_SHOWN = 16


def most_confident_mistakes(predicted, confidence, labels, count=MISTAKES_SHOWN):
    """The indices of the COUNT wrong predictions made with the highest probability, most confident first
    (fewer when there are fewer mistakes). PREDICTED, CONFIDENCE (its probability) and LABELS: one per image."""
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True, stable=True)[:count]
    return wrong[order]


def picked(images, labels, predicted, confidence, count=MISTAKES_SHOWN):
    """What the gallery shows, on the CPU: (images (N, 3, H, W) uint8, labels, predictions, probabilities)."""
    index = most_confident_mistakes(predicted, confidence, labels[:len(predicted)], count)
    return tuple(t[index].cpu() for t in (images, labels, predicted, confidence))


def label(text, width=20):
    """TEXT, escaped, in at most two lines of about WIDTH characters, ending in '…' when cut."""
    lines = textwrap.wrap(shown(text), width) or ["?"]
    if len(lines) > 2 or len(lines[-1]) > width:
        lines = [lines[0], lines[1][:width - 1] + "…"]
    return "\n".join(lines)


def gallery(images, labels, predicted, confidence, classes, title="most confident mistakes", columns=8):
    """A matplotlib Figure: the images as one mosaic (one picture to draw, so that it takes a tenth of the
    time a grid of subplots takes, every epoch), each under its true class and above, in red, the class
    predicted with its probability."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count, (height, width) = len(images), images.shape[2:]
    columns = min(columns, max(1, count))
    rows = max(1, math.ceil(count / columns))
    cell_w, cell_h = width + 4, height + 22  # room for two lines of each label
    mosaic = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    inches = 4 / 100  # per pixel of the mosaic: 4 pixels of the figure at its 100 dpi
    figure = Figure(figsize=(columns * cell_w * inches, rows * cell_h * inches + 0.45), dpi=100)
    FigureCanvasAgg(figure)
    figure.text(0.5, 1 - 0.08 / figure.get_figheight(), f"{title}\nabove each image its true class; below, in red, "
                "the class predicted, with its probability", ha="center", va="top", fontsize=9, parse_math=False)
    ax = figure.add_axes((0, 0, 1, 1 - 0.45 / figure.get_figheight()))
    ax.set_axis_off()
    if not count:
        ax.text(0.5, 0.5, "no mistakes: every test image\nwas classified correctly", ha="center", va="center",
                transform=ax.transAxes, parse_math=False)
    for k, (image, true, guess, probability) in enumerate(zip(images, labels.tolist(), predicted.tolist(),
                                                              confidence.tolist())):
        x, y = (k % columns) * cell_w + 2, (k // columns) * cell_h + 11
        mosaic[y:y + height, x:x + width] = np.asarray(image).transpose(1, 2, 0)
        ax.text(x, y - 0.5, label(f"true: {classes[true]}"), va="bottom", fontsize=8, parse_math=False)
        ax.text(x, y + height, label(f"{probability:.0%} {classes[guess]}"), va="top", fontsize=8, color="tab:red",
                parse_math=False)
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    return figure


def as_array(figure):
    """The figure as a uint8 (H, W, 3) array, which SummaryWriter.add_image(..., dataformats="HWC") takes."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_png(figure, path):
    """Write the figure to PATH as a PNG, atomically (a failure is one line, and PATH is untouched)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(buffer.getvalue(), path)

