"""The project's exceptions, one class per kind of bad input under TuduiError, each with a one-line message saying
what is wrong and how to fix it; console.run_cli turns them into exit codes."""


class TuduiError(Exception):
    """Bad input of any kind: catch this to catch them all. str(error) is the one-line message."""


class SettingsError(TuduiError):
    """Flags or settings that cannot be used, including a run folder that cannot be written."""


class DataError(TuduiError):
    """A dataset or an image that cannot be used."""


class CheckpointError(TuduiError):
    """A checkpoint that cannot be used."""

    @classmethod
    def damaged(cls, path, what):
        """A training checkpoint at PATH that cannot be resumed, for WHAT is wrong with it."""
        return cls(f"{path} is a damaged training checkpoint ({what}), so it cannot be resumed; resume from another "
                   "of the run's checkpoints (last.pth, best.pth or an epoch file)")


class Interrupted(KeyboardInterrupt):
    """A run stopped cleanly by Ctrl-C, SIGTERM or SIGHUP (SIGNAL_NUMBER); the message says how to resume. A
    KeyboardInterrupt, which `except Exception` does not swallow."""

    def __init__(self, message="", signal_number=2):  # 2: SIGINT, Ctrl-C's
        super().__init__(message)
        self.signal_number = signal_number
