"""Checks on a file from outside before it is read, and on a checkpoint's weights after: a regular file
(never a named pipe or a device, which would block a read forever), a checkpoint no larger than any
reasonable network's, with no compressed zip member (a decompression bomb), and the checksum that
train.py stores with a checkpoint's weights, so that a flipped bit is found. Reads nothing itself.
"""
import hashlib
import os
import stat
import zipfile

import torch

MAX_CHECKPOINT_BYTES = 256 << 20  # Tudui's checkpoints are 0.6 MB; a ResNet-50's weights, about 100 MB


def regular_file_problem(path):
    """Why PATH cannot be read as a file (a named pipe, a device, a folder), or None. A missing file is
    left to the reader, whose message says so."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, TypeError, ValueError):
        return None
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
        "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    return f"is {kind}, not a file"


def checkpoint_size_problem(path):
    """Why the checkpoint at PATH is refused before it is unpickled, or None: larger than
    MAX_CHECKPOINT_BYTES, on disk or once its zip members are unpacked, or holding a compressed member,
    which torch.save never writes."""
    try:
        if os.path.getsize(path) > MAX_CHECKPOINT_BYTES:
            return (f"is {os.path.getsize(path) >> 20} MB, over the {MAX_CHECKPOINT_BYTES >> 20} MB of any "
                    "reasonable network")
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, TypeError):
        return None  # the reader names what is wrong with it
    compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if compressed:
        return f"holds a compressed member ({compressed[0]}), which torch.save never writes: a possible zip bomb"
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_CHECKPOINT_BYTES:
        return f"unpacks to {unpacked >> 20} MB, over the {MAX_CHECKPOINT_BYTES >> 20} MB of any reasonable network"
    return None


def weights_checksum(state_dict):
    """The SHA-256 of a state_dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
