"""Run a project script with the POSIX-only calls that train.py avoids on Windows taken away:

    python tests/as_on_windows.py SCRIPT [ARGS...]

There is no fcntl module: file locks come from msvcrt.locking, emulated here on a POSIX lock so that
other processes' locks still count. There is no os.O_DIRECTORY, and opening a folder as a file fails, as
it does on Windows. Everything else is this machine's own, so this checks train.py's choices of calls,
not Windows itself."""
import errno
import fcntl
import os
import runpy
import subprocess  # noqa: F401  (imported before msvcrt appears, which it takes for a sign of Windows)
import sys
import types
from pathlib import Path

posix_flock, LOCK_EX, LOCK_NB, LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN
posix_open = os.open

msvcrt = types.ModuleType("msvcrt")
msvcrt.LK_UNLCK, msvcrt.LK_NBLCK = 0, 2


def locking(fd, mode, nbytes):
    """msvcrt.locking: lock (LK_NBLCK) or unlock (LK_UNLCK) NBYTES from the file's position; a region
    another handle holds raises OSError at once."""
    if nbytes != 1 or os.lseek(fd, 0, os.SEEK_CUR) != 0:
        raise OSError(errno.EINVAL, "this emulation only locks the first byte, as train.py does")
    try:
        posix_flock(fd, LOCK_UN if mode == msvcrt.LK_UNLCK else LOCK_EX | LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EDEADLK, "Resource deadlock avoided") from None


def open_no_folder(path, flags, mode=0o777, *, dir_fd=None):
    if os.path.isdir(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return posix_open(path, flags, mode, dir_fd=dir_fd)


msvcrt.locking = locking
sys.modules["msvcrt"] = msvcrt
sys.modules["fcntl"] = None  # `import fcntl` now raises ModuleNotFoundError
del os.O_DIRECTORY
os.open = open_no_folder

script = Path(sys.argv[1]).resolve()
sys.argv = sys.argv[1:]
sys.path.insert(0, str(script.parent))
runpy.run_path(str(script), run_name="__main__")
