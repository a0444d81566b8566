"""The machinery beside train.py, predict.py and model.py, one module per job; none imports train.py or
predict.py (the network comes from model.py).

    from tudui import load_tudui
    net = load_tudui("logs_train/RUN/best.pth")     # eval mode, with .classes and .preprocess

settings: flags, recipes, the lr schedule · datasets: CIFAR-10 and image folders from disk · images: one
image as the network sees it · batches: the data on the device, the batches a run loops over · checkpoints:
what a checkpoint is, read safely · runs: the run folder, saving and resuming · report: results, lines and
curves · pictures: what is drawn · checks: --dry-run, --evaluate · console: messages, signals, exit codes ·
devices, distributed, cuda_graph, muon · errors. weights/: the trained weights the project ships.
"""
from pathlib import Path

__version__ = "1.0.0"
# Trained weights that come with the project (`--recipe tuned`, 50 epochs; tools/ship_weights.py makes them)
SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "tuned-50-epochs.pth"


def __getattr__(name):
    """`from tudui import load_tudui`, imported when asked for: `import tudui` alone stays light."""
    if name == "load_tudui":
        from tudui.checkpoints import load_tudui
        return load_tudui
    raise AttributeError(f"module 'tudui' has no attribute {name!r}")
