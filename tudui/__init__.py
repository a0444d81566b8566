"""The machinery beside train.py, predict.py and model.py, one module per job; none of it imports them
(the network comes from model.py, looked up when a network is built).

    from tudui import load_tudui
    net = load_tudui("logs_train/RUN/best.pth")     # eval mode, with .classes and .preprocess

settings: the flags, recipes and lr schedule · datasets: CIFAR-10 and image folders · batches: the
training and test batches · checkpoints: safe loading, what a checkpoint holds · runs: the run folder
and what is written to it · report: --evaluate's report and TensorBoard's pictures · checks: --dry-run
and --evaluate · console: messages, progress, Ctrl-C, exit codes · devices, distributed, cuda_graph,
muon · errors.
"""
__version__ = "1.0.0"

from tudui.checkpoints import load_tudui  # noqa: E402  (after __version__, which checkpoints records)
