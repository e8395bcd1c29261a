"""All torch work of the app runs on its one compute thread, whatever thread an event arrives on.

Gradio calls each handler on whichever worker thread is free; on the CPU, parallel torch ops
started from many threads run slower (``refinenet.serving.ComputeThread`` says why),
so the app routes every handler through one thread. In-process: the handlers are called from
several threads, as Gradio's workers would, and every network run is checked for where it ran.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from refinenet.demo import SegmentOutputs

from .conftest import REPO

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "assets" / "synthetic-street-day.jpg"
VIEW_OPTIONS = (0.55, "pca", "per-map", "viridis", 4, None)  # opacity, reduction, scaling, colormap, k, block


def test_every_network_run_happens_on_the_compute_thread(app_module, app_model_folder):
    demo_app = app_module.DemoApp(str(app_model_folder), "cpu", compare_models=[])
    app_module.build_demo(demo_app)  # registers the app for the module-level network functions
    segmenter = demo_app.models.get(str(app_model_folder))
    ran_on = []
    forward = segmenter.model.forward

    def recording_forward(*args, **kwargs):
        ran_on.append(threading.get_ident())
        return forward(*args, **kwargs)

    segmenter.model.forward = recording_forward
    compute_thread = demo_app.compute.run(threading.get_ident)
    with ThreadPoolExecutor(max_workers=3) as gradio_like_workers:
        results = list(
            gradio_like_workers.map(
                lambda _: SegmentOutputs(*demo_app.segment(str(EXAMPLE), None, *VIEW_OPTIONS)).state, range(3)
            )
        )
        ablated = gradio_like_workers.submit(demo_app.ablate, results[0], "1/32", 0.55).result()
    demo_app.segment(str(EXAMPLE), None, *VIEW_OPTIONS)  # and from the test's own thread

    assert len(ran_on) == 5  # four segmentations and one ablation
    assert set(ran_on) == {compute_thread} and compute_thread != threading.get_ident()
    assert ablated[2].startswith("Without the **1/32** path")  # the ablation answered with its summary
    # The same picture gives the same label map whichever thread asked.
    first = results[0].display_labels
    assert all((r.display_labels == first).all() for r in results[1:])


def test_the_segment_events_return_the_named_outputs_in_order(app_module, app_model_folder):
    """The outputs are declared once (SegmentOutputs): the events' output components follow it."""
    demo_app = app_module.DemoApp(str(app_model_folder), "cpu", compare_models=[])
    blocks = app_module.build_demo(demo_app)
    names = SegmentOutputs.names()
    segment = next(fn for fn in blocks.fns.values() if fn.api_name == "segment")
    on_change = next(fn for fn in blocks.fns.values() if fn.fn.__name__ == "segment_on_change")
    assert [c._id for c in segment.outputs] == [c._id for c in on_change.outputs]
    assert len(segment.outputs) == len(names) and type(segment.outputs[0]).__name__ == "State"
    by_elem_id = {c.elem_id: names[i] for i, c in enumerate(segment.outputs) if c.elem_id}
    assert by_elem_id == {
        "overlay": "overlay",
        "legend": "legend",
        "confidence": "confidence",
        "label-png": "label_png",
        "stages": "stages",
        "crp-block": "crp_block",
        "crp": "crp",
        "ablated": "ablated",
        "changes": "changes",
        "ablation-path": "path",
        "architecture": "architecture",
        "timing": "timing",
    }
