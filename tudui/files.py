"""Writing a file so that a crash never leaves it half-written (or a second name for a file, as a hard
link), and the one-line error when it cannot be written. Why not a library: it is ten lines of
os.replace and fsync, which no installed package offers with the folder's fsync."""
import contextlib
import os
import re
from pathlib import Path

from tudui.errors import SettingsError


def atomic_write(data, path):
    """Write bytes so that PATH is always either the old file or the complete new one, even after a power
    cut. A failure (full disk, read-only folder) is a SettingsError of one line, and PATH is untouched."""
    with renamed_into_place(path) as tmp:
        write_synced(tmp, data)


def replace_with_link(source, path):
    """Make PATH name SOURCE's file, a hard link, so that its bytes are not written twice; as atomic as
    atomic_write: PATH is always either its old file or SOURCE's. Where the file system has no hard links
    (FAT, some network drives), SOURCE's bytes are written again instead."""
    with renamed_into_place(path) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            write_synced(tmp, Path(source).read_bytes())


@contextlib.contextmanager
def renamed_into_place(path):
    """A temporary name beside PATH (.NAME.PID.tmp) for the block to write, renamed over PATH when the
    block ends, and removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
        sync_folder(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise cannot_write(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_synced(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sync_folder(folder):
    """fsync FOLDER, so that a rename in it survives a power cut (POSIX; Windows cannot open a folder)."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temporaries(folder):
    """Delete the temporary files (.NAME.PID.tmp) that atomic_write left in FOLDER when its process was
    killed mid-write. Only for a folder this process holds the run lock of: no other writer is there."""
    for path in Path(folder).glob(".*.tmp"):
        if re.fullmatch(r"\..+\.\d+\.tmp", path.name) and path.is_file():
            path.unlink(missing_ok=True)


def cannot_write(path, error):
    return SettingsError(f"cannot write {path} ({error.strerror or error}); free some space or choose another "
                         "--logdir/--ckpt-dir; the files already there are intact")
