"""RefineNet teaching demo: segment a photo, then look inside the multi-path refinement.

    python app.py                              # the first zoo model that loads, on the GPU if any
    python app.py --model path/to/folder       # any model folder in the project's format, or a Hub repo id
    REFINENET_APP_MODEL=org/name python app.py
    python app.py --public --allow-repo org/name   # hosting mode (the default on a Hugging Face Space)
    python app.py --compare A,B,C              # the models "Compare the variants" shows side by side

In hosting mode (:class:`refinenet.serving.HostingPolicy`) visitors choose among the zoo's models
and the allowed Hub repos only, uploads and photos are bounded, and each visitor sees only the
models they loaded themselves.

This file is the user interface only: layout, events and the messages users read. The network
runs in :mod:`refinenet.inference`, the panels are computed by :mod:`refinenet.demo` and
:mod:`refinenet.visualize` (the variants' comparison by :mod:`refinenet.compare`), the HTML
widgets (with their CSS and JavaScript) come from :mod:`refinenet.widgets`, and
:mod:`refinenet.serving` keeps the models and the compute thread. The network runs once per
image; every view option re-renders from the activations cached in the session (``gr.State``).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Everything this process writes (Gradio's upload cache, the app's pictures and label maps) goes
# into one folder of its own, removed when the process ends: a public server must not fill its
# disk with what strangers uploaded. Set before Gradio is imported, which reads it then.
RUN_DIR = Path(tempfile.mkdtemp(prefix="refinenet-app-"))
os.environ.setdefault("GRADIO_TEMP_DIR", str(RUN_DIR / "gradio"))
atexit.register(shutil.rmtree, RUN_DIR, ignore_errors=True)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from refinenet import compare, demo, widgets, zoo  # noqa: E402
from refinenet.demo import SegmentOutputs  # noqa: E402
from refinenet.examples import EXAMPLE_SETS  # noqa: E402
from refinenet.images import ImageLoadError  # noqa: E402
from refinenet.serving import REFUSAL, ComputeThread, HostingPolicy, SegmenterCache, release_memory  # noqa: E402
from refinenet.visualize import COLORMAPS, REDUCTIONS, SCALINGS  # noqa: E402

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"
MODEL_ENV = "REFINENET_APP_MODEL"
DEVICE_ENV = "REFINENET_APP_DEVICE"
COMPARE_ENV = "REFINENET_APP_COMPARE"
# Sessions keep their cached activations this long after their last segmentation.
STATE_TTL_SECONDS = 15 * 60
# After a photo larger than this, freed memory is handed back to the system (release_memory):
# its full-size label map and confidence took hundreds of megabytes. After an everyday photo
# the next request reuses the same memory, and trimming it would only cost page faults.
TRIM_AFTER_PIXELS = 4_000_000
# Label-map PNGs written for download are removed after this long.
DOWNLOAD_TTL_SECONDS = 60 * 60
# The app's own files (pictures and label maps) never take more than this; the oldest go first.
DOWNLOADS_MAX_BYTES = 256 * 1024**2
# Gradio's upload cache is swept this often of files older than this, and emptied at shutdown.
UPLOAD_CACHE_SWEEP = (10 * 60, 30 * 60)
# Pictures for the photo-like panels are written by the app (see DemoApp.picture) into its
# download folder, which Gradio serves as a static path: no copy into Gradio's cache per picture
# (hashing, copying and path checks for every file), and the folder is pruned, where Gradio's
# cache would only grow. A picture outlives its session's cached activations (STATE_TTL_SECONDS),
# so a page never shows a picture the server has already removed.
PICTURE_TTL_SECONDS = 30 * 60
# Photo-like panels (overlay, confidence, ablation) go out as JPEG: many times faster to encode
# and smaller to send than a PNG. No chroma subsampling, so class colours keep their edges. The
# exact labels are in the lossless label-map PNG.
JPEG_QUALITY = 90

try:  # ZeroGPU on Hugging Face Spaces: borrow a GPU only while the network runs.
    import spaces

    network = spaces.GPU
except ImportError:

    def network(fn):
        return fn


# ---------------------------------------------------------------------------------------------
# Texts for students, shown beside the panels.

INTRO = """
# RefineNet: multi-path refinement, live

Upload a photo (or use your webcam, or paste from the clipboard). The model the demo opens with
knows the 20 PASCAL VOC classes (people, animals, vehicles, bottles, chairs, sofas, tables, potted
plants, screens); the CamVid models in the *Model* box know street scenes. The network is
**RefineNet** (Lin et al., CVPR 2017): a backbone shrinks the image to 1/32 of its size (1/16
in models that run its deepest blocks dilated, as DeepLab does); deep features know *what* is in
the picture, shallow ones know *where the edges are*. Four **RefineNet blocks** fuse them from
the top down, **RefineNet-4** (deepest) to **RefineNet-1** (1/4), and a classifier turns the
result into one class per pixel.
"""

EXAMPLES_NOTE = (
    "**About the examples:** the everyday photos are a NASA portrait (public domain) and Chelsea the "
    "cat (CC0). The street scenes are *synthetic*, drawn by a script: no street photograph with a "
    "licence to redistribute could be shipped (CamVid frames carry none), so for real street results "
    "choose a CamVid model and **upload your own street photo**."
)

SEGMENTATION_HELP = """
**Segmentation.** Each pixel gets the class with the highest score. The *opacity* slider blends
the class colours over your photo. The **confidence** map shows that highest probability:
bright = sure, dark = unsure; doubt gathers along object boundaries, where two classes meet.
"""

STAGES_HELP = """
**RefineNet-4 → RefineNet-1, deep to shallow.** Each picture is the output of one block, a stack
of C feature maps of H×W cells (one cell = *stride* × *stride* pixels of the network input). The
maps are enlarged *without smoothing*, so you see each block's real resolution: RefineNet-4
is coarse but knows "what", RefineNet-1 is four times finer per step down and sharpens the edges.
C channels are too many to look at, so they are **reduced**: *PCA to RGB* colours pixels with
similar feature vectors alike; *L2 norm* shows how strongly a place responds; *mean* is the
average channel; *top-k* shows the k strongest channels themselves. *Per map* scaling stretches
every picture to its own range; *shared* uses one range, so you can compare strengths.
"""

CRP_HELP = """
**Chained residual pooling (CRP).** Inside every block, CRP collects context from a growing
neighbourhood: each stage max-pools (5×5) the *previous stage's output* and convolves it, and the
result is added to a running sum. Pooling a pooled map widens the window: stage 1 sees 5×5 cells,
stage 2 9×9, stage 3 13×13, stage 4 17×17, drawn to scale on the photo. Top row: the input and
each stage's branch; bottom row: the pooling windows, then the running sum after each stage.
With *PCA to RGB* the nine maps share one colour basis (the sums add the branches to the input,
so they live in one feature space): the same colour means the same feature in every picture.
"""

ABLATION_HELP = """
**Path ablation.** RefineNet's long-range paths carry the backbone's features at 1/4, 1/8, 1/16
and 1/32 into the blocks. Switch one off (its features become zero) and the network runs again:
the change map shows the photo in grey with every pixel that changed class painted in its *new*
class colour. Cutting 1/32 usually changes *what* is recognised in large regions; cutting 1/4
mostly changes *boundaries*.
"""

COMPARE_HELP = f"""
**Compare the variants.** The paper asks what each part of RefineNet is worth by training
variants that differ in one thing: fewer blocks in the cascade (a 2-cascade fuses two backbone
levels per block, a 1-cascade all four in one block), or no chained residual pooling. Their test
mIoUs say who wins on average; here you see them on *your* photo. Every variant sees the same
pixels (your photo resized once) and paints each pixel in its class colour. The **disagreement
map** shows, {compare.DISAGREEMENT_DEFINITION}. Grey: all agree; yellow to dark red: more
variants disagree. Disagreement gathers along edges and on small or thin objects (poles, signs),
where fine detail from the shallow levels matters most.
"""

ARCHITECTURE_HELP = """
**The architecture of this run.** Top: the backbone levels, bottom: the RefineNet blocks that
fuse them (RCU = residual conv unit, MRF = multi-resolution fusion, CRP = chained residual
pooling), with the tensor shapes (C×H×W) your image produced. A switched-off path is dashed.
"""


# ---------------------------------------------------------------------------------------------
# Input


def undecoded_upload(payload):
    """The ``preprocess`` of the image input: hand the uploaded file to the package undecoded.

    ``gr.Image`` would open the file with Pillow itself and fail on a damaged upload with
    Pillow's message and a server path. Decoding, EXIF orientation, colour modes (grey, RGBA,
    16-bit) and the size limit are :func:`refinenet.images.load_image`'s job, whose errors are
    written for users. (Set on the instance: a ``gr.Image`` subclass would make Gradio write an
    ``app.pyi`` stub next to this file.)
    """
    if payload is None:
        return None
    url = getattr(payload, "url", None)
    if url and url.startswith("data:"):  # a pasted or captured image sent inline
        try:
            return base64.b64decode(url.split(",", 1)[1], validate=False)
        except (ValueError, IndexError) as error:
            raise user_error("The pasted image could not be decoded; try uploading the file instead.") from error
    return payload.path


# ---------------------------------------------------------------------------------------------
# The application


def on_compute_thread(handler):
    """Run an event handler on the app's compute thread, whatever thread Gradio calls it on.

    All torch work of the demo (loading models, the network, the views) happens on that one
    thread: on the CPU a parallel op started from many threads runs slower (see
    :class:`refinenet.serving.ComputeThread`). It also serialises the requests, which on a
    small CPU only share its cores anyway.
    """

    @functools.wraps(handler)
    def run(self, *args, **kwargs):
        return self.compute.run(handler, self, *args, **kwargs)

    return run


class DemoApp:
    """The model cache, the download folder and the event handlers of one running demo."""

    def __init__(
        self,
        default_model: str | None = None,
        device: str | None = None,
        policy: HostingPolicy | None = None,
        compare_models: list[str] | None = None,
    ) -> None:
        """``compare_models``: the models of "Compare the variants" (--compare); ``None`` means
        the zoo's ablation family, and an empty list no comparison."""
        self.policy = policy or HostingPolicy()
        self.compute = ComputeThread()
        explicit = compare_models is not None
        compare_names = (
            list(compare_models)
            if compare_models is not None
            else [entry.model_id for entry in zoo.family_members(zoo.ABLATION_FAMILY)]
        )
        # The operator's choices (--model, --compare) are trusted and may be any folder; what
        # visitors type is checked against the policy in segmenter_for before it gets here.
        self.operator_models = {name for name in [default_model, *compare_names] if name}
        # The compared models stay loaded (pinned, see _choose_variants): the cache holds them on
        # top of its usual three, so that what visitors load still has room.
        self.models = SegmenterCache(
            loader=self._load,
            device=device,
            max_pixels=self.policy.max_pixels,
            capacity=3 + len(compare_names),
        )
        self.downloads = Path(tempfile.mkdtemp(prefix="files-", dir=RUN_DIR))
        self.default_model, self.startup_notes = self.compute.run(self._choose_default, default_model)
        self.models.pin(self.default_model)
        self.variants: list[compare.Variant] = self.compute.run(self._choose_variants, compare_names, explicit)

    def _load(self, name: str):
        """Load for the cache: names are read as paths only in local mode or for the operator's
        own --model and --compare; in hosting mode a zoo id or allowed repo id never touches the disk."""
        return self.policy.load(name, operator=name in self.operator_models)

    # -- models -------------------------------------------------------------------------------

    def _choose_default(self, requested: str | None) -> tuple[str, list[str]]:
        """The requested model, else the first zoo model that loads; a clear error otherwise."""
        if requested:
            try:
                self.models.get(requested)
            except Exception as error:  # shown to whoever starts the app
                raise SystemExit(f"The model {requested!r} could not be loaded: {error}") from error
            return requested, []
        failures = []
        for entry in zoo.list_pretrained():
            try:
                self.models.get(entry.model_id)
                return entry.model_id, failures
            except Exception as error:
                failures.append(f"{entry.model_id}: {error}")
        raise SystemExit(
            "No model could be loaded, so the demo cannot start.\n  "
            + "\n  ".join(failures or ["the zoo lists no models"])
            + f"\nGive one explicitly: python app.py --model FOLDER_OR_REPO_ID (or set {MODEL_ENV})."
        )

    def _choose_variants(self, names: list[str], explicit: bool) -> list[compare.Variant]:
        """Load and check the models to compare; ``[]`` when there is nothing to compare.

        Models the operator named (--compare) must load and be comparable, or the app stops with
        the reason, as for --model. The default, the zoo's ablation family, is left out with a
        printed note when it cannot be shown: the rest of the demo does not depend on it.
        """
        try:
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(f"{', '.join(map(repr, twice))} named twice")
            if explicit and len(names) == 1:
                raise ValueError(f"comparing needs at least two models, got only {names[0]!r}")
            if len(names) < 2:
                return []
            segmenters = []
            for name in names:
                try:
                    segmenters.append(self.models.get(name))
                except Exception as error:
                    raise ValueError(f"the model {name!r} could not be loaded: {error}") from error
                self.models.pin(name)
            variants = [compare.variant(name, s.config) for name, s in zip(names, segmenters, strict=True)]
            compare.check_comparable(variants, segmenters)
            return variants
        except ValueError as error:
            if explicit:
                raise SystemExit(f"--compare {','.join(names)}: {error}") from error
            print(f"Compare the variants: left out, {error}", file=sys.stderr, flush=True)
            return []

    def model_choices(self, session_models: list[str] | None = None) -> list[str]:
        """The zoo, the default model and the models this visitor loaded (never another's)."""
        names = [entry.model_id for entry in zoo.list_pretrained()]
        for name in [self.default_model, *(session_models or [])]:
            if name not in names:
                names.append(name)
        return names

    def segmenter_for(self, name: str | None):
        name = str(name or self.default_model).strip()
        if name != self.default_model and not self.policy.admits(name):
            raise user_error(REFUSAL, title="Model not available")
        try:
            return name, self.models.get(name)
        except Exception as error:
            shown = name if len(name) <= 100 else name[:97] + "..."
            raise user_error(
                f"The model {shown!r} could not be loaded: {self.policy.explain(error)}", title="Model not available"
            ) from error

    @on_compute_thread
    def load_model(
        self,
        name: str,
        session_models: list[str] | None = None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """Load a zoo model, Hub repo id or (locally) a model folder, and make it the selected model."""
        name = str(name or "").strip()
        if not name:
            raise user_error(
                "Type a Hub repo id (ORG/NAME) first."
                if self.policy.public
                else "Type a Hub repo id (ORG/NAME) or the path of a model folder first."
            )
        progress(0, desc="Loading …")
        tick = time.perf_counter()
        segmenter = self.segmenter_for(name)[1]
        config = segmenter.config
        classes = ", ".join(segmenter.class_names[:12]) + (" …" if config.num_classes > 12 else "")
        status = (
            f"Model **{name}** ready ({config.architecture}, {config.backbone}, {config.num_classes} classes: "
            f"{classes}; runs at {segmenter.max_side} px, on {segmenter.device.type}; "
            f"loaded in {time.perf_counter() - tick:.1f} s)."
        )
        session_models = [n for n in (session_models or []) if n != name] + [name]
        return gr.Dropdown(choices=self.model_choices(session_models), value=name), status, session_models

    @on_compute_thread
    def layout_for(self, name: str):
        """The CRP block choices of a newly selected model (its blocks may differ)."""
        names = self.segmenter_for(name)[1].config.block_names
        return gr.update(choices=names, value=default_crp_block(names))

    # -- segmentation -------------------------------------------------------------------------

    def _prune_downloads(self) -> None:
        """Remove files past their time to live, then the oldest until the folder fits its bound."""
        now = time.time()
        kept = []
        for pattern, ttl in (("labels-*.png", DOWNLOAD_TTL_SECONDS), ("view-*", PICTURE_TTL_SECONDS)):
            for path in self.downloads.glob(pattern):
                try:
                    stat = path.stat()
                    if stat.st_mtime < now - ttl:
                        path.unlink()
                    else:
                        kept.append((stat.st_mtime, stat.st_size, path))
                except OSError:
                    pass
        total = sum(size for _, size, _ in kept)
        for _, size, path in sorted(kept, key=lambda item: item[0]):
            if total <= DOWNLOADS_MAX_BYTES:
                break
            path.unlink(missing_ok=True)
            total -= size

    def picture(self, array: np.ndarray) -> str:
        """Write a photo-like panel (overlay, confidence, ablation) as a JPEG; return its path.

        Handing Gradio an array would make it encode a PNG at zlib level 6, far slower than the
        JPEG. (Feature maps travel inside the HTML of their grid.)
        """
        path = self.downloads / f"view-{uuid.uuid4().hex[:16]}.jpg"
        Image.fromarray(array).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        return str(path)

    @staticmethod
    def _require_image(image, button: str) -> None:
        if image is None:
            raise user_error(
                f"No image yet: upload a photo, use the webcam or paste an image, then press {button}.",
                title="No image",
            )

    @contextlib.contextmanager
    def _readable_errors(self, failed: str = "Segmentation failed"):
        """Turn what reading a photo and running a network raise into messages for users (one
        wording for every endpoint that takes a photo)."""
        try:
            yield
        except ImageLoadError as error:
            raise user_error(f"This file cannot be used as an image: {error}.", title="Unreadable image") from error
        except MemoryError as error:
            raise user_error(
                "The image is too large for the memory of this server; downscale it and try again.",
                title="Image too large",
            ) from error
        except (OSError, RuntimeError, ValueError) as error:
            raise user_error(f"{failed}: {error}", title=failed) from error

    def png(self, image: Image.Image) -> str:
        """Write a lossless picture (a palette PNG: its pixel values are data) and return its path."""
        path = self.downloads / f"view-{uuid.uuid4().hex[:16]}.png"
        image.save(path, format="PNG", compress_level=3)
        return str(path)

    def run_network(self, image, model_name: str | None) -> demo.DemoResult:
        """Load the input (readable errors) and run the network once, caching every activation."""
        self._require_image(image, "Segment")
        name, segmenter = self.segmenter_for(model_name)
        with self._readable_errors():
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            self._prune_downloads()
            return demo.segment(segmenter, data, model_id=name, out_dir=self.downloads)

    def run_comparison(self, image) -> compare.Comparison:
        """Every compared variant on the photo (readable errors, as for a segmentation)."""
        self._require_image(image, "Compare the variants")
        segmenters = [self.models.get(v.name) for v in self.variants]  # pinned: loaded at startup
        with self._readable_errors("Comparison failed"):
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            return compare.compare(self.variants, segmenters, data, max_pixels=self.policy.max_pixels)

    @on_compute_thread
    def compare_variants(self, image):
        """The photo through every variant, side by side, and where they disagree."""
        comparison = network_compare(image)
        self._prune_downloads()
        outputs = (
            compare.render_variants(comparison),
            self.png(compare.render_disagreement(comparison)),
            compare.disagreement_legend(comparison),
        )
        if comparison.original_size[0] * comparison.original_size[1] > TRIM_AFTER_PIXELS:
            release_memory()  # the decoded photo was large (see TRIM_AFTER_PIXELS)
        return outputs

    @on_compute_thread
    def segment(self, image, model_name, opacity, reduction, scaling, colormap, top_k, crp_block):
        """Segment an image and render every panel."""
        result = network_run(image, model_name)
        tick = time.perf_counter()
        blocks = [b.name for b in result.blocks]
        crp_block = crp_block if crp_block in blocks else default_crp_block(blocks)
        # Plain values, not gr.update(...): an update makes Gradio rebuild the component and its
        # API schema for the session. The block choices are set when a model loads.
        crp, crp_context = self.crp_html(result, crp_block, reduction, scaling, colormap)
        outputs = SegmentOutputs(
            state=result,
            overlay=self.picture(demo.render_overlay(result, opacity)),
            legend=demo.render_legend(result),
            confidence=self.picture(demo.render_confidence(result)),
            label_png=str(result.label_png),
            stages=self.stages_html(result, reduction, scaling, colormap, top_k),
            crp_block=crp_block,
            crp=crp,
            crp_context=crp_context,
            ablated=None,
            changes=None,
            ablation_summary="Choose a path to switch off.",
            path="none",
            architecture=demo.render_architecture(result),
            timing=None,
        )
        result.seconds["rendering"] = time.perf_counter() - tick
        outputs.timing = demo.timing_markdown(result, result.seconds["rendering"])
        if result.original_size[0] * result.original_size[1] > TRIM_AFTER_PIXELS:
            release_memory()
        return outputs.values()

    def segment_on_change(self, image, *args):
        """Auto-run when the input image changes (upload, example, webcam); clearing it is silent."""
        if image is None:
            return tuple(gr.skip() for _ in SegmentOutputs.names())
        return self.segment(image, *args)

    # -- views from the cache -----------------------------------------------------------------

    @staticmethod
    def _cached(result: demo.DemoResult | None) -> demo.DemoResult:
        if result is None:
            raise user_error(
                "Segment an image first: the views are drawn from its cached activations.", title="Nothing to show yet"
            )
        return result

    @on_compute_thread
    def overlay(self, result, opacity):
        """Re-blend the label colours at a new opacity (no network run)."""
        return self.picture(demo.render_overlay(self._cached(result), opacity))

    @on_compute_thread
    def features(self, result, reduction, scaling, colormap, top_k):
        """RefineNet-4 … RefineNet-1 outputs with a reduction and scaling (no network run)."""
        return self.stages_html(self._cached(result), reduction, scaling, colormap, top_k)

    def stages_html(self, result: demo.DemoResult, reduction, scaling, colormap, top_k) -> str:
        """The block outputs as a grid of pictures (one row per block with top-k)."""
        reduction, scaling, colormap = _view_options(reduction, scaling, colormap)
        k = int(top_k or 1)
        if not 1 <= k <= 16:
            raise user_error("top-k must be between 1 and 16.")
        return demo.stages_grid(result, reduction, scaling, colormap, k)

    @on_compute_thread
    def crp(self, result, block, reduction, scaling, colormap):
        """Chained residual pooling of one block: input, branches, running sums (no network run)."""
        return self.crp_html(self._cached(result), block, reduction, scaling, colormap)

    def crp_html(self, result: demo.DemoResult, block, reduction, scaling, colormap) -> tuple[str, str]:
        """The CRP grid (input + one column per stage) and the text on its pooling windows."""
        names = [b.name for b in result.blocks]
        if block not in names:
            raise user_error(f"No block named {block!r}; this model has {', '.join(names)}.")
        reduction, scaling, colormap = _view_options(reduction, scaling, colormap)
        return (demo.crp_grid(result, block, reduction, scaling, colormap), demo.crp_context_markdown(result, block))

    @on_compute_thread
    def ablate(self, result, path, opacity):
        """Switch off one backbone path (1/4, 1/8, 1/16, 1/32) and show what changed."""
        result = self._cached(result)
        if path in (None, "", "none"):
            return None, None, "All paths are on: this is the full network.", demo.render_architecture(result)
        try:
            stride = int(str(path).removeprefix("1/"))
        except ValueError:
            stride = -1
        if stride not in (4, 8, 16, 32):
            raise user_error(f"The path to switch off must be 1/4, 1/8, 1/16 or 1/32, not {path!r}.")
        if stride not in result.ablations:
            result.ablations[stride] = network_ablated_labels(result.model_id, result.work_image, stride)
        view = demo.ablation_view(result, stride, opacity)
        return (
            self.picture(view.overlay),
            self.picture(view.changes),
            view.summary,
            demo.render_architecture(result, ablated_stride=stride),
        )


def user_error(message: str, title: str = "Error") -> gr.Error:
    """An error for the user: shown in the UI (and to API clients), without a server traceback."""
    return gr.Error(message, title=title, print_exception=False)


def default_crp_block(blocks: list[str]) -> str:
    """RefineNet-3 when there is one: its 16-pixel cells make the growing windows easy to see."""
    return "RefineNet-3" if "RefineNet-3" in blocks else blocks[0]


def _option(value, allowed: dict[str, str], what: str) -> str:
    if value in allowed:
        return value
    for key, label in allowed.items():  # accept the label shown in the UI as well
        if value == label:
            return key
    raise user_error(f"Unknown {what} {value!r}; choose one of: {', '.join(allowed)}.")


def _view_options(reduction, scaling, colormap) -> tuple[str, str, str]:
    """The feature-map view's three options, checked (an API client may send anything)."""
    return (
        _option(reduction, REDUCTIONS, "reduction"),
        _option(scaling, SCALINGS, "scaling"),
        _option(colormap, {c: c for c in COLORMAPS}, "colour map"),
    )


# The app whose events are being served. The functions that run the network reach it through
# this module global rather than an argument, so that their arguments stay plain picklable data
# (ZeroGPU runs them in a worker process).
APP: DemoApp | None = None


@network
def network_run(image, model_name: str | None) -> demo.DemoResult:
    try:
        return APP.run_network(image, model_name)
    except BaseException:
        release_memory()  # a failed request may have left large blocks behind
        raise


@network
def network_compare(image) -> compare.Comparison:
    try:
        return APP.run_comparison(image)
    except BaseException:
        release_memory()
        raise


@network
def network_ablated_labels(model_name: str, work_image, stride: int):
    segmenter = APP.segmenter_for(model_name)[1]
    try:
        return demo.ablated_labels(segmenter, work_image, stride)
    except (RuntimeError, ValueError) as error:
        raise user_error(f"The ablation failed: {error}") from error


# ---------------------------------------------------------------------------------------------
# Layout


def build_demo(app: DemoApp) -> gr.Blocks:
    global APP
    APP = app
    reduction_choices = [(label, key) for key, label in REDUCTIONS.items()]
    scaling_choices = [(label, key) for key, label in SCALINGS.items()]
    gr.set_static_paths([app.downloads])  # see PICTURE_TTL_SECONDS
    with gr.Blocks(title="RefineNet: multi-path refinement, live", delete_cache=UPLOAD_CACHE_SWEEP) as blocks:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(
                    label="Your image",
                    sources=["upload", "webcam", "clipboard"],
                    type="filepath",
                    image_mode=None,
                    height=360,
                    elem_id="input-image",
                )
                image.preprocess = undecoded_upload
                segment_button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                for label, names in EXAMPLE_SETS:
                    examples = [[str(ASSETS / name)] for name in names if (ASSETS / name).is_file()]
                    if examples:
                        gr.Examples(examples=examples, inputs=[image], label=label)
                gr.Markdown(EXAMPLES_NOTE)
                with gr.Accordion("Model", open=True):
                    model = gr.Dropdown(
                        choices=app.model_choices(),
                        value=app.default_model,
                        label="Model",
                        allow_custom_value=True,
                        elem_id="model-choice",
                    )
                    custom = gr.Textbox(
                        label=(
                            "…or one of the Hugging Face repos this demo allows (ORG/NAME)"
                            if app.policy.public
                            else "…or a Hugging Face repo id (ORG/NAME) or a local model folder"
                        ),
                        placeholder="org/refinenet-model"
                        if app.policy.public
                        else "org/refinenet-model  or  /path/to/folder",
                    )
                    load_button = gr.Button("Load model")
                    model_status = gr.Markdown(
                        f"Model **{app.default_model}** is loaded."
                        + "".join(f"\n\n(skipped {n})" for n in app.startup_notes)
                    )
            with gr.Column(scale=3, min_width=360):
                gr.Markdown(SEGMENTATION_HELP)
                overlay = gr.Image(label="Segmentation overlay", format="png", interactive=False, elem_id="overlay")
                opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="Label opacity")
                timing = gr.Markdown(elem_id="timing")
                with gr.Row():
                    legend = gr.HTML(
                        label="Classes and their share of the pixels (hover a class to see it)",
                        elem_id="legend",
                        js_on_load=widgets.LEGEND_JS,
                        css_template=widgets.LEGEND_CSS,
                    )
                    confidence = gr.Image(
                        label="Confidence (max softmax)", format="png", interactive=False, elem_id="confidence"
                    )
                download = gr.File(
                    label="Label map (lossless palette PNG: pixel value = class index)",
                    interactive=False,
                    elem_id="label-png",
                )

        gr.Markdown("## Inside RefineNet: RefineNet-4 → RefineNet-1")
        gr.Markdown(STAGES_HELP)
        with gr.Row():
            reduction = gr.Radio(reduction_choices, value="pca", label="Reduction of the channels")
            scaling = gr.Radio(scaling_choices, value="per-map", label="Scaling")
            colormap = gr.Dropdown(list(COLORMAPS), value="viridis", label="Colour map (perceptually uniform)")
            top_k = gr.Slider(1, 8, value=4, step=1, label="k for top-k channels")
        default_config = app.models.get(app.default_model).config
        stages = gr.HTML(label="Block outputs, deep to shallow", show_label=True, container=True, elem_id="stages")

        gr.Markdown("## Chained residual pooling")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                gr.Markdown(CRP_HELP)
                block_names = default_config.block_names
                crp_block = gr.Dropdown(
                    choices=block_names, value=default_crp_block(block_names), label="Block", elem_id="crp-block"
                )
                crp_context = gr.Markdown()
            with gr.Column(scale=3):
                crp = gr.HTML(
                    label="CRP: input and branches (top), windows and running sums (bottom)",
                    show_label=True,
                    container=True,
                    elem_id="crp",
                )

        gr.Markdown("## Path ablation")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                gr.Markdown(ABLATION_HELP)
                path = gr.Radio(
                    [("keep all", "none"), ("1/4", "4"), ("1/8", "8"), ("1/16", "16"), ("1/32", "32")],
                    value="none",
                    label="Switch off the backbone path at",
                    elem_id="ablation-path",
                )
                ablation_summary = gr.Markdown("Choose a path to switch off.")
            ablated = gr.Image(label="Prediction without that path", format="png", interactive=False, elem_id="ablated")
            changes = gr.Image(
                label="Where it changed (new class colour)", format="png", interactive=False, elem_id="changes"
            )

        gr.Markdown("## Architecture")
        gr.Markdown(ARCHITECTURE_HELP)
        architecture = gr.HTML(elem_id="architecture")

        # Without variants to compare (none trained yet, or --compare ""), the section is left
        # out rather than shown with a note: a visitor cannot act on "not trained yet", and an
        # empty section with a button would only invite a click that cannot work. The README
        # says how an operator turns it on.
        compare_button = compare_outputs = None
        if app.variants:
            gr.Markdown("## Compare the variants")
            gr.Markdown(COMPARE_HELP)
            gr.Markdown(
                "Compared on this server:\n" + "\n".join(f"- {v.caption}" for v in app.variants),
                elem_id="compare-models",
            )
            compare_button = gr.Button("Compare the variants", elem_id="compare-button")
            variant_maps = gr.HTML(
                label="Each variant's prediction (class colours)",
                show_label=True,
                container=True,
                elem_id="compare-variants",
            )
            with gr.Row():
                disagreement = gr.Image(
                    label="Disagreement: how many variants differ from the most common class (pixel value = count)",
                    format="png",
                    interactive=False,
                    elem_id="disagreement",
                )
                disagreement_key = gr.HTML(elem_id="disagreement-key")
            compare_outputs = [variant_maps, disagreement, disagreement_key]

        state = gr.State(None, time_to_live=STATE_TTL_SECONDS)
        session_models = gr.State([])  # the models this visitor loaded: only they see them

        view_inputs = [opacity, reduction, scaling, colormap, top_k, crp_block]
        outputs = list(
            SegmentOutputs(
                state=state,
                overlay=overlay,
                legend=legend,
                confidence=confidence,
                label_png=download,
                stages=stages,
                crp_block=crp_block,
                crp=crp,
                crp_context=crp_context,
                ablated=ablated,
                changes=changes,
                ablation_summary=ablation_summary,
                path=path,
                architecture=architecture,
                timing=timing,
            ).values()
        )
        # One network event at a time (all torch work runs on the app's one compute thread anyway);
        # the queue shows waiting users their place.
        network_options = dict(concurrency_limit=1, concurrency_id="network")
        segment_button.click(app.segment, [image, model, *view_inputs], outputs, api_name="segment", **network_options)
        image.change(
            app.segment_on_change, [image, model, *view_inputs], outputs, api_visibility="private", **network_options
        )
        opacity.release(app.overlay, [state, opacity], overlay, api_name="overlay")
        feature_inputs = [state, reduction, scaling, colormap, top_k]
        reduction.input(app.features, feature_inputs, stages, api_name="features")
        for control in (scaling, colormap):
            control.input(app.features, feature_inputs, stages, api_visibility="private")
        top_k.release(app.features, feature_inputs, stages, api_visibility="private")
        crp_inputs = [state, crp_block, reduction, scaling, colormap]
        crp_block.input(app.crp, crp_inputs, [crp, crp_context], api_name="crp")
        for control in (reduction, scaling, colormap):
            control.input(app.crp, crp_inputs, [crp, crp_context], api_visibility="private")
        if compare_button is not None:
            compare_button.click(app.compare_variants, [image], compare_outputs, api_name="compare", **network_options)
        path.input(
            app.ablate,
            [state, path, opacity],
            [ablated, changes, ablation_summary, architecture],
            api_name="ablate",
            **network_options,
        )
        load_outputs = [model, model_status, session_models]
        load_button.click(
            app.load_model, [custom, session_models], load_outputs, api_name="load_model", **network_options
        ).success(app.layout_for, model, crp_block, api_visibility="private")
        model.input(
            app.load_model, [model, session_models], load_outputs, api_visibility="private", **network_options
        ).success(app.layout_for, model, crp_block, api_visibility="private")
    return blocks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="RefineNet teaching demo (Gradio)")
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV),
        help=f"zoo id, Hub repo id or model folder (default: ${MODEL_ENV}, else the first zoo model that loads)",
    )
    parser.add_argument("--device", default=os.environ.get(DEVICE_ENV), help="cpu, cuda, mps (default: best)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME"), help="address to listen on")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--queue-size", type=int, default=32, help="requests waiting at most")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--public",
        dest="public",
        action="store_true",
        default=None,
        help="hosting mode: visitors load zoo models and --allow-repo repos only; uploads and photos are bounded "
        "(the default when $SPACE_ID is set, i.e. on a Hugging Face Space)",
    )
    mode.add_argument("--local", dest="public", action="store_false", help="local mode even on a Space")
    parser.add_argument(
        "--allow-repo",
        action="append",
        default=[],
        metavar="ORG/NAME",
        help="a Hub repo visitors may load in hosting mode (repeat it; also $REFINENET_ALLOWED_REPOS, comma-separated)",
    )
    parser.add_argument(
        "--compare",
        default=os.environ.get(COMPARE_ENV),
        metavar="MODEL[,MODEL...]",
        help="the models 'Compare the variants' shows side by side: zoo ids, model folders or Hub repo ids, "
        f"comma-separated; '' leaves the section out (default: ${COMPARE_ENV}, else the zoo's "
        f"{zoo.ABLATION_FAMILY} family, shown once it has two models)",
    )
    return parser.parse_args(argv)


def compare_list(value: str | None) -> list[str] | None:
    """``--compare``'s names; ``None`` (not given: the zoo's family) or a list ([]: none)."""
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    policy = HostingPolicy.from_environment(args.public, args.allow_repo)
    # A stop request (SIGTERM from a Space or a service manager) ends the process like Ctrl-C, so
    # the app's files and Gradio's upload cache are removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DemoApp(args.model, args.device, policy, compare_list(args.compare))
    blocks = build_demo(app)
    blocks.queue(default_concurrency_limit=4, max_size=args.queue_size)
    mcp = importlib.util.find_spec("mcp") is not None  # gradio[mcp] installed: also serve the tools
    print(f"hosting mode: {'public' if policy.public else 'local'}", flush=True)
    try:
        blocks.launch(
            server_name=args.host,
            server_port=args.port,
            show_error=False,
            mcp_server=mcp or None,
            allowed_paths=[str(ASSETS)],
            footer_links=["api", "gradio", "settings"],
            css=widgets.PICTURE_GRID_CSS,
            max_file_size=policy.max_upload_bytes,
        )
    finally:
        blocks.close()
        shutil.rmtree(RUN_DIR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
