"""Which device a run uses and how the process is set up for it: --device, cuDNN's and TF32's settings
(--deterministic), what --amp costs, and on the CPU glibc's reuse of freed memory. No training code."""
import contextlib
import ctypes
import os
import platform
import sys

import torch

from tudui.errors import SettingsError


def pick_device(name):
    """The torch.device for a --device value: auto is cuda, then mps, then cpu."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if not available[name]:
        raise SettingsError(f"--device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def keep_freed_memory():
    """Make CPU steps reuse the memory the step before freed, instead of mapping fresh pages that fault on their
    first write (docs/speed.md). Process-wide, so `python train.py` alone calls it, never a notebook's kernel or a
    torchrun rank; other C libraries than glibc are left alone."""
    if platform.libc_ver()[0] != "glibc" or os.environ.get("WORLD_SIZE", "1") != "1":
        return
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    mallopt(m_mmap_max, 0)  # no block is mapped (glibc still maps memory when the heap cannot grow)
    mallopt(m_trim_threshold, 256 << 20)  # and up to 256 MB of freed heap is kept for reuse


def native_bfloat16():
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo; None without it."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_note(device):
    """One line on what --amp costs on DEVICE, where that is worth saying: a CPU without native bf16."""
    if device.type == "cpu" and native_bfloat16() is False:
        return ("--amp: this CPU has no native bfloat16 (no AVX-512 BF16 or AMX), where bf16 autocast ran over 10x "
                "slower than fp32 (920 against 68 ms a step, docs/speed.md); leave --amp out here")
    return None


@contextlib.contextmanager
def device_settings(device, deterministic=False, quiet=True, amp=False):
    """cuDNN's fastest algorithms (cudnn.benchmark), or with DETERMINISTIC deterministic ones, no TF32 and torch's
    deterministic mode, so that runs of one seed give equal weights; unless QUIET a line says what that costs, and
    what AMP costs where it is slow. Restored on exit; a CPU, bit-exact anyway, is left alone."""
    if deterministic and not quiet:
        print("--deterministic: nothing to change on the CPU, whose runs are bit-exact already" if device.type != "cuda"
              else "--deterministic: deterministic cuDNN and torch algorithms, no TF32, no cudnn.benchmark: runs of "
                   "one seed give equal weights, and GPU steps are slower for it (docs/speed.md)", flush=True)
    if amp and amp_note(device):
        print(amp_note(device), file=sys.stderr, flush=True)
    if device.type != "cuda":
        yield
        return
    backends = torch.backends
    saved = (backends.cudnn.benchmark, backends.cudnn.deterministic, backends.cudnn.allow_tf32,
             backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled())
    backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic workspace
        backends.cudnn.deterministic = True
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        (backends.cudnn.benchmark, backends.cudnn.deterministic, backends.cudnn.allow_tf32,
         backends.cuda.matmul.allow_tf32) = saved[:4]
        torch.use_deterministic_algorithms(saved[4])
