"""The project's exceptions: one class per kind of bad input, all under TuduiError, each carrying a
one-line message that says what is wrong and how to fix it. Only console.run_cli turns them into exit codes.
Holds no logic."""


class TuduiError(Exception):
    """Bad input of any kind: catch this to catch them all. str(error) is the one-line message."""


class SettingsError(TuduiError):
    """Flags or settings that cannot be used, including a run folder that cannot be written."""


class DataError(TuduiError):
    """A dataset or an image that cannot be used."""


class CheckpointError(TuduiError):
    """A checkpoint that cannot be used."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a notebook's interrupt), SIGTERM or SIGHUP, whose number is SIGNAL_NUMBER, stopped a run
    cleanly; the message says how to resume it. A KeyboardInterrupt, so that `except Exception` does not
    swallow it."""

    def __init__(self, message="", signal_number=2):  # 2: SIGINT, Ctrl-C's
        super().__init__(message)
        self.signal_number = signal_number
