"""TensorBoard's pictures of an epoch and --mistakes' picture, as matplotlib Figures (object API, never pyplot: safe
on the thread that draws them beside training): the confusion matrix, test images with what was predicted, and those
most confidently misclassified. Picks and draws; scores nothing."""
import math
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tudui.console import shown

MISTAKES_SHOWN = 16
GRID_IMAGES = 32  # test images shown with their predictions each epoch


def most_confident_mistakes(predicted, confidence, labels, count=MISTAKES_SHOWN):
    """The indices of the COUNT wrong predictions of highest probability (CONFIDENCE), most confident first."""
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


def figure_of(width, height, title):
    """An empty Figure on an Agg canvas, of WIDTH x HEIGHT inches, titled (drawn as written, never as TeX)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height + 0.45), dpi=100)
    FigureCanvasAgg(figure)
    figure.text(0.5, 1 - 0.08 / figure.get_figheight(), title, ha="center", va="top", fontsize=9, parse_math=False)
    return figure


def mosaic(images, captions, title, columns=8):
    """IMAGES as one picture (a tenth of the time of a grid of subplots), each with its CAPTIONS: (above, below,
    colour)."""
    count, (height, width) = len(images), images.shape[2:]
    columns = min(columns, max(1, count))
    rows = max(1, math.ceil(count / columns))
    cell_w, cell_h = width + 4, height + 22  # room for two lines of each caption
    pixels = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    inches = 4 / 100  # per pixel of the mosaic: 4 pixels of the figure at its 100 dpi
    figure = figure_of(columns * cell_w * inches, rows * cell_h * inches, title)
    ax = figure.add_axes((0, 0, 1, 1 - 0.45 / figure.get_figheight()))
    ax.set_axis_off()
    for k, (image, (above, below, colour)) in enumerate(zip(images, captions)):
        x, y = (k % columns) * cell_w + 2, (k // columns) * cell_h + 11
        pixels[y:y + height, x:x + width] = np.asarray(image).transpose(1, 2, 0)
        if above:
            ax.text(x, y - 0.5, label(above), va="bottom", fontsize=8, parse_math=False)
        ax.text(x, y + height, label(below), va="top", fontsize=8, color=colour, parse_math=False)
    ax.imshow(pixels, interpolation="nearest", aspect="auto")
    return figure, ax


def gallery(images, labels, predicted, confidence, classes, title="most confident mistakes"):
    """The mistakes picked(): each image under its true class, above the class predicted, in red, with its
    probability."""
    captions = [(f"true: {classes[true]}", f"{probability:.0%} {classes[guess]}", "tab:red")
                for true, guess, probability in zip(labels.tolist(), predicted.tolist(), confidence.tolist())]
    figure, ax = mosaic(images, captions, f"{title}\nabove each image its true class; below, in red, the class "
                                          "predicted, with its probability")
    if not captions:
        ax.text(0.5, 0.5, "no mistakes: every test image\nwas classified correctly", ha="center", va="center",
                transform=ax.transAxes, parse_math=False)
    return figure


def prediction_grid(images, labels, predicted, classes):
    """Test images with the class predicted under each: green when right, red with the true one when wrong."""
    captions = [("", classes[guess], "tab:green") if true == guess else ("", f"{classes[guess]} ({classes[true]})",
                                                                         "tab:red")
                for true, guess in zip(labels.tolist(), predicted.tolist())]
    return mosaic(images, captions, "test images: the class predicted (and the true one, when wrong)")[0]


def confusion_figure(confusion, classes, title="confusion matrix"):
    """The confusion matrix as a heat map (rows the true class), each cell shaded by its row share and labelled with
    its count."""
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 1.2 + 0.45 * len(classes)
    figure = figure_of(size, size, f"{title}: rows the true class, columns the one predicted")
    ax = figure.add_axes((0.22, 0.03, 0.75, 0.78 - 0.45 / figure.get_figheight()))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    names = [label(name, 12).replace("\n", " ") for name in classes]
    ax.set_xticks(range(len(classes)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), names, fontsize=7)
    ax.xaxis.tick_top()
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                color="white" if shares[i, j] > 0.6 else "black")
    return figure


class Painter:
    """Draws each epoch's pictures into WRITER (a SummaryWriter) on a thread of its own, beside training."""

    def __init__(self, writer):
        self.writer, self.pool, self.painting = writer, ThreadPoolExecutor(1), None

    def paint(self, images, labels, tested, classes, epoch):
        """The confusion matrix, predictions and mistakes of TESTED, train.test's result on IMAGES and LABELS."""
        self.wait()
        grid = tuple(t[:GRID_IMAGES].cpu() for t in (images, labels, tested["predicted"]))
        mistakes = picked(images, labels, tested["predicted"], tested["confidence"])
        self.painting = self.pool.submit(self.draw, tested["confusion"], grid, mistakes, classes, epoch)

    def draw(self, confusion, grid, mistakes, classes, epoch):
        self.writer.add_figure("confusion_matrix", confusion_figure(confusion, classes, f"epoch {epoch}"), epoch,
                               close=False)
        self.writer.add_figure("test_predictions", prediction_grid(*grid, classes), epoch, close=False)
        self.writer.add_figure("test_mistakes", gallery(*mistakes, classes, f"epoch {epoch}: the test images most "
                                                        "confidently misclassified"), epoch, close=False)
        self.writer.flush()

    def wait(self):
        """Wait for the pictures of the epoch before; a full disk they met raises here."""
        if self.painting is not None:
            painting, self.painting = self.painting, None
            painting.result()

    def close(self):
        try:
            self.wait()
        finally:
            self.pool.shutdown()
