"""Serving models to many users from one process: the compute thread, the model cache and
memory release.

A web server (the app) answers requests on whichever worker thread is free, keeps several
models loaded for its users, and sees photos of every size. Each of those has a cost that a
one-shot script never meets; this module holds what pays it:

- :class:`ComputeThread` runs all torch work on one long-lived thread;
- :class:`SegmenterCache` keeps the most recently used models loaded, each loaded once;
- :func:`release_memory` hands freed heap memory back to the operating system;
- :class:`HostingPolicy` says what strangers may ask a public server to load and send.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch

from . import zoo
from .config import ConfigError
from .folder import DEFAULT_MAX_WEIGHT_BYTES, IntegrityError, ModelNotFoundError, TooLargeError, WeightsError
from .hub import from_pretrained
from .images import DEFAULT_MAX_PIXELS
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
        self,
        loader: Callable[[str], torch.nn.Module] | None = None,
        device: str | None = None,
        capacity: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.loader = loader if loader is not None else from_pretrained
        self.device = device
        self.max_pixels = max_pixels
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, Segmenter] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._pinned: set[str] = set()

    def pin(self, name: str) -> None:
        """Never evict ``name`` (the default model: models users load must not push it out)."""
        with self._lock:
            self._pinned.add(str(name).strip())

    def get(self, name: str) -> Segmenter:
        name = str(name).strip()
        if not name:
            raise ValueError("no model given: choose a model, or type a Hub repo id or a local folder")
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            loading = self._loading.setdefault(name, threading.Lock())
        try:
            with loading:  # one load per name; other models stay usable meanwhile
                with self._lock:
                    if name in self._models:
                        return self._models[name]
                model = self.loader(name)
                segmenter = Segmenter(
                    model,
                    device=self.device,
                    max_side=int(cast(Any, model).config.input_size),
                    max_pixels=self.max_pixels,
                )
                with self._lock:
                    self._models[name] = segmenter
                    evictable = [n for n in self._models if n not in self._pinned]
                    while len(self._models) > self.capacity and evictable:
                        del self._models[evictable.pop(0)]
                return segmenter
        finally:
            # Loaded or failed, the name's lock is no longer needed: a server that kept one per
            # name ever asked for would grow with every typo (or every attacker's string).
            with self._lock:
                if self._loading.get(name) is loading and not loading.locked():
                    del self._loading[name]

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)


# Set by Hugging Face Spaces in every Space's environment: a running Space is public by default.
SPACE_ENV = "SPACE_ID"
ALLOWED_REPOS_ENV = "REFINENET_ALLOWED_REPOS"
REFUSAL = "Only the models listed in the Model box can be loaded on this public demo."
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class HostingPolicy:
    """What a server lets its users load and send.

    ``public`` (a Space, or ``--public``): the model box takes zoo ids and the Hub repo ids of
    ``allowed_repos`` only, compared as exact strings: user text is never read as a path, so the
    server's disk is neither loaded from nor probed, and every refused name gets the same message
    (:data:`REFUSAL`), so that no answer reveals anything. Local mode (``python app.py`` on a
    laptop) loads any folder or Hub repo, which is what a developer wants there.
    ``max_weight_bytes`` bounds a model before it is downloaded or read, ``max_pixels`` a photo
    before it is decoded, and ``max_upload_bytes`` an upload before it is stored.
    """

    public: bool = False
    allowed_repos: frozenset[str] = field(default_factory=frozenset)
    max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload_bytes: int | None = None

    @classmethod
    def for_public(cls, allowed_repos: Iterable[str] = ()) -> HostingPolicy:
        """The public defaults: weights up to 512 MB (every RefineNet but the ResNet-152 one), photos
        up to 24 megapixels (a phone camera's: a few seconds of decoding, network and drawing on
        two cores, where a 110-megapixel one took gigabytes), uploads up to 25 MB."""
        return cls(
            public=True,
            allowed_repos=frozenset(r.strip() for r in allowed_repos if r.strip()),
            max_weight_bytes=512 * 1024**2,
            max_pixels=24_000_000,
            max_upload_bytes=25 * 1024**2,
        )

    @classmethod
    def from_environment(cls, public: bool | None = None, allowed_repos: Iterable[str] = ()) -> HostingPolicy:
        """Public on a Space unless ``public=False``; allowed repos from the argument and from
        ``$REFINENET_ALLOWED_REPOS`` (comma-separated)."""
        if public is None:
            public = bool(os.environ.get(SPACE_ENV))
        repos = [*allowed_repos, *os.environ.get(ALLOWED_REPOS_ENV, "").split(",")]
        return cls.for_public(repos) if public else cls()

    def admits(self, name: str) -> bool:
        """Whether a user may ask for ``name``: anything in local mode; in public mode exactly a
        zoo id or an allowed repo id (no paths, no control characters, nothing long)."""
        if not self.public:
            return True
        if len(name) > 200 or _CONTROL.search(name):
            return False
        return name in zoo.MODELS or name in self.allowed_repos

    def load(self, name: str, operator: bool = False) -> torch.nn.Module:
        """Load ``name`` under this policy (a :class:`SegmenterCache` loader). ``operator``: the
        name comes from whoever started the server (its default model), who may name a folder."""
        if not operator and not self.admits(name):
            raise PermissionError(REFUSAL)
        local = operator or not self.public
        return from_pretrained(name, allow_local=local, max_weight_bytes=self.max_weight_bytes)

    def explain(self, error: BaseException) -> str:
        """A short message for a failed load. Public servers say what was wrong with the model
        (a config field, its size, its checksum) and never echo paths or library errors."""
        cause = error.__cause__ if isinstance(error, WeightsError) and error.__cause__ else error
        if isinstance(error, PermissionError):
            return REFUSAL
        if isinstance(cause, ConfigError):
            return f"its config.json was refused: {cause}"
        if isinstance(error, TooLargeError):
            return str(error)
        if not self.public:
            text = str(error)
            return text if len(text) <= 2000 else text[:1997] + "..."
        if isinstance(error, IntegrityError):
            return "its weights failed their checksum"
        if isinstance(error, ModelNotFoundError):
            return "it could not be found or downloaded"
        return "it could not be loaded"


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
