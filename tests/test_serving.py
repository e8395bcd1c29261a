"""Serving: the compute thread, the model cache and memory release."""

from __future__ import annotations

import contextvars
import copy
import threading
import time

import pytest

from refinenet.serving import ComputeThread, SegmenterCache, release_memory

pytestmark = pytest.mark.usefixtures("single_thread")


def test_compute_thread_runs_every_call_on_one_thread_other_than_the_callers():
    compute = ComputeThread()
    seen = []
    callers = [threading.Thread(target=lambda: seen.append(compute.run(threading.get_ident))) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    seen.append(compute.run(threading.get_ident))
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()
    assert compute.run(compute.is_current) and not compute.is_current()


def test_compute_thread_is_reentrant_carries_context_and_raises_errors():
    compute = ComputeThread()
    # A call made from the compute thread runs inline: waiting for the thread itself would hang.
    done = []
    nested = threading.Thread(target=lambda: done.append(compute.run(lambda: compute.run(lambda: 7))), daemon=True)
    nested.start()
    nested.join(timeout=10)
    assert done == [7]
    # Context variables of the caller (Gradio's progress tracker is one) are visible in the call.
    var = contextvars.ContextVar("request", default=None)
    var.set("caller's value")
    assert compute.run(var.get) == "caller's value"
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0)
    assert compute.run(lambda: "still serving") == "still serving"


def test_release_memory_can_be_called_any_time():
    release_memory()
    release_memory()


# ----------------------------------------------------------------------------- model cache


class SlowLoader:
    def __init__(self, model):
        self.model = model
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, name):
        with self.lock:
            self.calls.append(name)
        time.sleep(0.05)  # long enough for concurrent callers to overlap
        return self.model


def test_segmenter_cache_loads_each_model_once_even_concurrently(tiny_model):
    loader = SlowLoader(copy.deepcopy(tiny_model))
    cache = SegmenterCache(loader, device="cpu")
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["a"]
    assert len({id(s) for s in got}) == 1
    assert got[0].max_side == tiny_model.config.input_size


def test_segmenter_cache_evicts_the_least_recently_used(tiny_model):
    loader = SlowLoader(copy.deepcopy(tiny_model))
    cache = SegmenterCache(loader, device="cpu", capacity=2)
    for name in ("a", "b", "a", "c", "b"):
        cache.get(name)
    assert loader.calls == ["a", "b", "c", "b"]  # "b" was dropped when "c" came in
    assert cache.loaded() == ["c", "b"]
    with pytest.raises(ValueError, match="no model given"):
        cache.get("  ")
