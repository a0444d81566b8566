"""Writing a file so that a crash never leaves it half-written, and the one-line error when it cannot be
written. Why not a library: it is ten lines of os.replace and fsync, which no installed package offers
with the folder's fsync."""
import os
import re
from pathlib import Path

from tudui.errors import SettingsError


def atomic_write(data, path):
    """Write bytes so that PATH is always either the old file or the complete new one, even after a power
    cut. A failure (full disk, read-only folder) is a SettingsError of one line, and PATH is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # POSIX: sync the folder too, so that the rename survives a power cut
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)  # (Windows cannot open a folder)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise cannot_write(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder):
    """Delete the temporary files (.NAME.PID.tmp) that atomic_write left in FOLDER when its process was
    killed mid-write. Only for a folder this process holds the run lock of: no other writer is there."""
    for path in Path(folder).glob(".*.tmp"):
        if re.fullmatch(r"\..+\.\d+\.tmp", path.name) and path.is_file():
            path.unlink(missing_ok=True)


def cannot_write(path, error):
    return SettingsError(f"cannot write {path} ({error.strerror or error}); free some space or choose another "
                         "--logdir/--ckpt-dir; the files already there are intact")
