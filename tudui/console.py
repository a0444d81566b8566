"""How train.py and predict.py talk to the person running them: argparse with one-line errors, printing
and the progress bar, Ctrl-C, run_cli, the one place where the project's exceptions become exit codes,
and the end of the process. Holds no training code."""
import argparse
import os
import signal
import sys
import threading

from tudui.errors import Interrupted, SettingsError, TuduiError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a flag it cannot read raised as a one-line SettingsError instead of printing the
    usage block and exiting: the command line prints it as every other error, a Python caller catches it."""

    def error(self, message):
        raise SettingsError(f"{message}; see {self.prog} --help")


def say(quiet, *parts):
    """Print PARTS unless QUIET, above a progress bar that is being drawn (tqdm.write), never through it."""
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(" ".join(map(str, parts)))
        sys.stdout.flush()


def in_notebook():
    """Whether this process is a Jupyter kernel (IPython running inside an ipykernel app)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return shell is not None and "IPKernelApp" in shell.config


def progress_bar(description, enabled):
    """A function that wraps an iterable in a progress bar, on a terminal and in a notebook, where
    tqdm.auto draws a widget if ipywidgets is installed and text otherwise. Elsewhere (a log file, a pipe)
    it draws nothing."""
    from tqdm.auto import tqdm

    shown = enabled and (sys.stderr.isatty() or in_notebook())
    return lambda iterable: tqdm(iterable, desc=description, leave=False, unit="step", disable=not shown)


class StopOnCtrlC:
    """The first Ctrl-C (a notebook's interrupt is one too) asks the loop to stop after the current step;
    a second one raises KeyboardInterrupt at once, which still closes the run's files and releases its
    lock, so a notebook's kernel can resume the run. Installed from the main thread only, where signal
    handlers can be set."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.stop_now)
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    @staticmethod
    def stop_now(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def run_cli(entry):
    """Run a script's ENTRY() and return its exit code: ENTRY's own (an int, or 0 for anything else),
    2 for bad input (one line on stderr, never a traceback), 130 for Ctrl-C, 1 when a reader closed the
    pipe early (`| head`), which ends quietly, as any Unix tool."""
    try:
        code = entry()
        return code if isinstance(code, int) else 0
    except TuduiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside the training loop, which stops itself cleanly: loading data, say
        print("\ninterrupted; files already saved are intact", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1
    except SystemExit as e:  # --help, which argparse ends with an exit of its own
        return e.code if isinstance(e.code, int) else 0


def exit_process(code):
    """End the script with exit code CODE. Under torchrun, with os._exit once every file is closed: gloo's
    worker threads outlive destroy_process_group, and tearing them down as Python exited sometimes
    aborted a finished rank (SIGABRT), which torchrun reports as a failed run (docs/distributed.md)."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
