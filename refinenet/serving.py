"""Serving models to many users from one process: the compute thread, the model cache and
memory release.

A web server (the app) answers requests on whichever worker thread is free, keeps several
models loaded for its users, and sees photos of every size. Each of those has a cost that a
one-shot script never meets; this module holds what pays it:

- :class:`ComputeThread` runs all torch work on one long-lived thread;
- :class:`SegmenterCache` keeps the most recently used models loaded, each loaded once;
- :func:`release_memory` hands freed heap memory back to the operating system.
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import torch

from .inference import Segmenter

R = TypeVar("R")


class ComputeThread:
    """One long-lived thread on which a server runs all of its torch work.

    Why a server needs it on the CPU: PyTorch's OpenMP runtime (libgomp on Linux) gives every
    thread that starts a parallel op a team of worker threads of its own, and once more such
    threads exist than cores it stops letting idle workers spin-wait (its "throttled" spin
    count): each of the network's few hundred parallel regions must then wake sleeping threads.
    A web server runs every request on whichever worker thread is free, so after a few requests
    that is the normal state, and the network runs markedly slower than in a plain script. With
    all torch work, model loading included, on one thread, it runs as fast as in a script
    (``benchmarks/README.md`` has the measurements).

    ``run`` copies the caller's context variables into the call (as ``asyncio.to_thread`` does),
    so per-request state such as a progress tracker follows the work, and runs inline when
    called from the compute thread itself (a handler calling another cannot deadlock).
    """

    def __init__(self, name: str = "torch-compute") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._thread = self._executor.submit(threading.current_thread).result()

    def run(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """``fn(*args, **kwargs)`` on the compute thread; its exceptions are raised here."""
        if self.is_current():
            return fn(*args, **kwargs)
        context = contextvars.copy_context()
        return self._executor.submit(context.run, fn, *args, **kwargs).result()

    def is_current(self) -> bool:
        """Whether the caller is running on the compute thread."""
        return threading.current_thread() is self._thread


class SegmenterCache:
    """Loaded models by name (zoo id, Hub repo id or folder), at most ``capacity`` at a time.

    Loading goes through ``loader`` (:func:`refinenet.hub.from_pretrained` by default: strict,
    sha256-checked, with download progress on tqdm). Each model runs at its own training input
    size (``config.input_size`` as the long-side cap) to keep the network time low; the least
    recently used model is dropped when a new one would exceed ``capacity``. Thread-safe: two
    sessions asking for the same model load it once.
    """

    def __init__(
        self, loader: Callable[[str], torch.nn.Module] | None = None, device: str | None = None, capacity: int = 3
    ) -> None:
        if loader is None:
            from .hub import from_pretrained as loader
        assert loader is not None  # mypy does not narrow through the import above
        self.loader = loader
        self.device = device
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, Segmenter] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, name: str) -> Segmenter:
        name = str(name).strip()
        if not name:
            raise ValueError("no model given: choose a model, or type a Hub repo id or a local folder")
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per name; other models stay usable meanwhile
            with self._lock:
                if name in self._models:
                    return self._models[name]
            model = self.loader(name)
            segmenter = Segmenter(model, device=self.device, max_side=int(cast(Any, model).config.input_size))
            with self._lock:
                self._models[name] = segmenter
                self._loading.pop(name, None)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return segmenter

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)


def release_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc only; a no-op elsewhere).

    One segmentation allocates and frees tens of megabytes (hundreds for a 108 MP photo) from
    several worker threads; glibc keeps such freed blocks in per-thread arenas, so a server's
    resident memory would ratchet up towards the worst request it ever served. ``malloc_trim``
    returns them.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None  # libc's malloc_trim; False where there is none


__all__ = [
    "ComputeThread",
    "SegmenterCache",
    "release_memory",
]
