"""Keeping the daemon's resident memory small: glibc malloc settings and handing freed memory
back to the kernel."""

from __future__ import annotations

import os


def one_malloc_arena() -> None:
    """Before any thread starts: one glibc malloc arena for all threads. By default each thread
    that allocates gets an arena of its own, and a dozen mostly idle threads keep 1-3 MB
    resident for nothing (bench/idle.py, bench/storm.py). No-op without glibc or when
    MALLOC_ARENA_MAX is set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def release_free_memory() -> bool:
    """Hand the start-up's (or a reload's) freed memory back to the kernel: collect garbage
    cycles, then glibc's malloc_trim(0) returns the free pages inside the heap, which free()
    keeps. False without glibc."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
