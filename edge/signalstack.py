"""Drop a too-small alternate signal stack that native libraries leave on the calling thread.

OpenVINO's CPU plugin installs an ~11 KB sigaltstack on the thread that compiles a model. CPython runs
every Python signal handler (SIGTERM, SIGINT, torch's SIGCHLD) on that stack; once the CPU's extended
state grows (AVX-512/AMX after oneDNN bf16/int8 kernels ran), the kernel cannot fit the signal frame there
and kills the process with SIGSEGV instead of running the handler. With no alternate stack the handler
uses the thread's normal stack, which is large enough.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_SS_DISABLE = 2
_MIN_SAFE_BYTES = 1 << 16  # generous: AMX signal frames are ~11 KB


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def drop_small_alternate_signal_stack() -> bool:
    """Disable this thread's alternate signal stack if it is smaller than 64 KiB; True if one was dropped."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False
    current = _StackT()
    if libc.sigaltstack(None, ctypes.byref(current)) != 0:
        return False
    if current.ss_flags & _SS_DISABLE or current.ss_size >= _MIN_SAFE_BYTES:
        return False
    disable = _StackT(None, _SS_DISABLE, 0)
    return int(libc.sigaltstack(ctypes.byref(disable), None)) == 0
