"""Which device a run uses, and how the process is set up for it: the --device choice, cuDNN's settings,
and on the CPU glibc's reuse of freed memory. Holds no training code."""
import ctypes
import platform

import torch

from errors import SettingsError


def pick_device(name):
    """The torch.device for a --device value: auto is cuda, then mps, then cpu."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if not available[name]:
        raise SettingsError(f"--device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def keep_freed_memory():
    """Make CPU steps reuse the memory the step before freed, instead of mapping fresh pages that fault on
    their first write (glibc maps large blocks from the system and unmaps them when freed; docs/speed.md).
    Process-wide, so it also holds for a notebook that trains; results are unchanged, and other C
    libraries (macOS, musl) are left as they are."""
    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    mallopt(m_mmap_max, 0)  # no block is mapped (glibc still maps memory when the heap cannot grow)
    mallopt(m_trim_threshold, 256 << 20)  # and up to 256 MB of freed heap is kept for reuse
