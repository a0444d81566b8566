"""How train.py and predict.py talk to the person running them: one-line errors, printing, the progress
bar, signals, and run_cli, the one place where the project's exceptions become exit codes. No training."""
import argparse
import contextlib
import os
import signal
import sys
import threading

from tudui.errors import Interrupted, SettingsError, TuduiError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, a flag it cannot read raised as a one-line SettingsError instead of the usage block and exit."""

    def error(self, message):
        raise SettingsError(f"{message}; see {self.prog} --help")


def shown(text):
    """TEXT from a file (a name, a path, a record), control characters escaped: it can neither colour the
    terminal nor start a line of its own."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def say(quiet, *parts):
    """Print PARTS unless QUIET, above a progress bar being drawn (tqdm.write), never through it."""
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(" ".join(map(str, parts)))
        sys.stdout.flush()


def in_notebook():
    """Whether this process is a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return shell is not None and "IPKernelApp" in shell.config


def progress_bar(description, enabled):
    """A function that wraps an iterable in a progress bar on a terminal or in a notebook; none in a log file."""
    from tqdm.auto import tqdm

    shown = enabled and (sys.stderr.isatty() or in_notebook())
    return lambda iterable: tqdm(iterable, desc=description, leave=False, unit="step", disable=not shown)


STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


class StopOnSignal:
    """The first Ctrl-C (or a notebook's interrupt), SIGTERM (SLURM, Kubernetes, docker stop) or SIGHUP asks
    the loop to stop after the current step (SIGNAL: its number; a line says so when ANNOUNCE). A second one
    raises Interrupted AT_ONCE (not under torchrun, whose ranks stop after the same step and whose agent
    sends SIGTERM twice); the files still close. Once the loop has stopped (interrupted()), signals are
    ignored, so that the resume message comes through. Main thread only, where handlers can be set."""

    def __init__(self, announce=True, at_once=True):
        self.requested, self.signal, self.previous, self.stopping = False, None, {}, False
        self.announce, self.at_once = announce, at_once

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.stopping or (self.requested and not self.at_once):
            return
        if self.requested:
            raise Interrupted(f"stopped at once by a second {signal.Signals(signum).name}; files already saved are "
                              "intact", signum)
        self.requested, self.signal = True, signum
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step ({again} again to stop at once)",
                  file=sys.stderr, flush=True)

    def interrupted(self):
        """The Interrupted that stops the loop: from now on, signals wait for the closing."""
        self.stopping = True
        return Interrupted("", self.signal)

    def __exit__(self, *exc):
        for number, previous in self.previous.items():
            signal.signal(number, previous)


@contextlib.contextmanager
def keep_the_resume_call():
    """A with-block in which an interrupt landing while a stopped run closes its files (a second Ctrl-C in a
    notebook) still ends in the Interrupted that says how to resume."""
    try:
        yield
    except KeyboardInterrupt as error:
        earlier = error
        while earlier is not None and not getattr(earlier, "resume_call", False):
            earlier = earlier.__context__
        if earlier is None or earlier is error:
            raise
        raise earlier from None


def run_cli(entry):
    """Run a script's ENTRY() and return its exit code: ENTRY's own int (else 0), 2 for bad input (one line,
    never a traceback), 128 + the signal's number when Ctrl-C (130), SIGTERM (143) or SIGHUP (129) stopped it,
    1 when a reader closed the pipe early (`| head`). Outside the training loop, SIGTERM and SIGHUP stop the
    script as Ctrl-C does: the files it has open are closed."""
    def stop_at_once(signum, frame):
        raise Interrupted(f"\n{signal.Signals(signum).name}: stopped; files already saved are intact", signum)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, stop_at_once) for number in STOP_SIGNALS[1:]} if in_main_thread else {}
    try:
        code = entry()
        return code if isinstance(code, int) else 0
    except TuduiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        if str(e):  # under torchrun, rank 0 alone says how to resume
            print(e, file=sys.stderr)
        return 128 + e.signal_number
    except KeyboardInterrupt:  # outside the training loop, which stops itself cleanly: loading data, say
        print("\ninterrupted; files already saved are intact", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1
    except SystemExit as e:  # --help, which argparse ends with an exit of its own
        return e.code if isinstance(e.code, int) else 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def exit_process(code):
    """End the script with CODE; under torchrun with os._exit once the files are closed, since gloo's threads
    tearing down at Python's exit sometimes aborted a finished rank (docs/distributed.md)."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
