"""Decoding untrusted images where a runaway decoder can be stopped without stopping the caller.

A `DecoderPool` is a small pool of worker processes (pebble's `ProcessPool`):

- each task has a deadline; a worker that overruns it is killed and replaced, and the task's
  future fails with a 422 rejection ("took longer than ... s");
- each worker may grow by at most `memory_mb` beyond what it holds after start-up
  (`RLIMIT_DATA`), so a bomb that slips past the header checks hits `MemoryError` in the worker,
  which becomes a 422, instead of taking the machine's memory;
- a worker that dies (a crash in a C decoder, the kernel's OOM killer) fails only its task,
  with a 422 saying so;
- workers are replaced after `max_tasks` tasks, so fragmentation and leaks cannot accumulate.

Workers are forked from a fresh forkserver process, not from the caller: they start small
(not with the caller's pandas, Great Expectations and model in their address space, which
would eat the memory cap) and import only the decoder.

The API returns `concurrent.futures.Future`s: a batch caller waits with `as_completed`, an async
caller (a serving replica) awaits `asyncio.wrap_future(pool.decode(body))`.

Why pebble rather than `concurrent.futures.ProcessPoolExecutor`: the standard pool has no
per-task timeout, cannot kill one worker (a dead worker breaks the whole pool), and has no
per-worker task limit with the forkserver context; pebble has all three and is maintained.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
from collections.abc import Callable
from concurrent.futures import Future, TimeoutError
from typing import Any

from .images import DEFAULT_LIMITS, DecodedImage, ImageLimits, ImageRejected, decode_image

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 768
DEFAULT_MAX_TASKS = 250
# Imported once by the forkserver, so every worker forked from it starts with them loaded
# (`__main__` too: otherwise each new worker would import the caller's main module again).
_PRELOAD = ["__main__", "data.inspection", "imagehash", "scipy.fftpack"]  # imagehash imports fftpack lazily


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity mask
        return os.cpu_count() or 1


def _data_size() -> int:
    """This process's private writable memory now (VmData): heap, anonymous maps, thread stacks."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmData in /proc/self/status")


def _start_worker(memory_bytes: int, quiet: bool, nice: int = 0) -> None:
    """Runs in each new worker: cap its private memory at what it has now plus the budget.

    The cap is `RLIMIT_DATA`, which (Linux 4.7 and later) counts the heap, anonymous mappings
    and thread stacks: what decoding allocates. `RLIMIT_AS` would also count address space that
    is only reserved (each malloc arena reserves 64 MB), so the same budget would buy less.

    Pillow's fixed decompression-bomb limit is switched off here: the header check against the
    caller's `max_pixels` comes first (so a bomb is reported with its size), and the memory cap
    stops whatever a header does not announce.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    if nice:  # a lower CPU priority: this worker's decodes run on what the rest leaves over
        os.nice(nice)
        if nice >= 19 and hasattr(os, "SCHED_IDLE"):  # the lowest: any other runnable task preempts it at once
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if quiet:  # C decoders (libtiff) print their complaints about hostile files; the rejection says enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    if memory_bytes > 0:
        try:
            limit = _data_size() + memory_bytes
        except OSError:  # no /proc: not Linux; the cap is then the budget alone
            limit = memory_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _decode_in_worker(data: bytes, limits: ImageLimits, all_frames: bool, target_size) -> DecodedImage:
    return decode_image(data, limits, all_frames=all_frames, target_size=target_size)


class DecoderPool:
    """Worker processes that run decoding functions under a deadline and a memory cap."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
        max_tasks: int = DEFAULT_MAX_TASKS,
        quiet: bool = True,
        preload: list[str] | None = None,
        nice: int = 0,
    ):
        """`preload`: modules the forkserver imports once for every worker (default: the caller's
        `__main__` and the validation's inspection code; a serving replica, whose `__main__` is
        Ray's worker, names what it needs instead)."""
        from pebble import ProcessPool

        self.workers = workers or available_cpus()
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(
            _PRELOAD if preload is None else preload
        )  # no effect once this process's forkserver runs
        self._pool = ProcessPool(
            max_workers=self.workers,
            max_tasks=max_tasks,
            initializer=_start_worker,
            initargs=(memory_mb * 2**20, quiet, nice),
            context=context,
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` in a worker. The future gives its result, or raises what `fn` raised, or
        `ImageRejected(422)` when the worker overran the deadline, ran out of memory or died."""
        inner = self._pool.submit(fn, self.timeout_s, *args)
        outer: Future = Future()
        outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
        inner.add_done_callback(lambda f: self._settle(f, outer))
        return outer

    def decode(
        self,
        data: bytes,
        limits: ImageLimits = DEFAULT_LIMITS,
        *,
        all_frames: bool = False,
        target_size: tuple[int, int] | None = None,
    ) -> Future:
        """`data.images.decode_image` in a worker: a future of a `DecodedImage`, or of `ImageRejected`."""
        return self.submit(_decode_in_worker, data, limits, all_frames, target_size)

    def _settle(self, inner: Future, outer: Future) -> None:
        if not outer.set_running_or_notify_cancel():
            return
        try:
            outer.set_result(inner.result())
        except BaseException as e:  # every outcome is handed to the caller
            outer.set_exception(self.rejection(e) or e)

    def rejection(self, error: BaseException) -> ImageRejected | None:
        """The 422 a worker-side failure means, or None when it is the function's own exception."""
        from pebble import ProcessExpired

        if isinstance(error, TimeoutError):
            detail = f"decoding took longer than {self.timeout_s:g} s and was stopped"
        elif isinstance(error, ProcessExpired):
            detail = f"the decoder crashed or was killed (exit code {error.exitcode})"
        elif isinstance(error, MemoryError):
            detail = f"decoding needs more memory than a decoder may use ({self.memory_mb} MB)"
        else:
            return None
        return ImageRejected(422, "undecodable", detail)

    def close(self) -> None:
        """Stop the workers now (tasks still queued are cancelled)."""
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
