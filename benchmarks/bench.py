"""Inference benchmark: the plain eager fp32 baseline against the project's fast path.

A benchmark, not a test: it measures and writes ``benchmarks/results/<device>.json`` and
``<device>.md``, stamped with the machine, library versions, commit and the exact command.

    python benchmarks/bench.py                      # full run, CPU (and GPU when present), ~10 min on 2 cores
    python benchmarks/bench.py --quick              # two mobile models, few repeats (~2 min)
    python benchmarks/bench.py --models lw-mobilenetv2 --sizes 512 --repeats 20

For every model and size it reports latency (median and p90 of repeated calls after warm-up),
throughput at batch 1 and at a larger batch, peak memory, achieved FLOP/s (2 x multiply-adds of
the conv layers / median time) against the device's practical peak (a large matmul measured on
the same device), and the agreement of every fast variant with eager fp32 (relative error of
the logits, argmax agreement) on random and real images. Paths are timed *interleaved* (one
call of each per round), so that drifting load on a shared machine hits all of them alike.

Each model runs in its own subprocess: the memory high-water mark then belongs to that model,
and one model running out of memory does not end the run.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # app.py lives at the repository root
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import refinenet  # noqa: E402
from refinenet.data import VOC_PSEUDO_ROOT  # noqa: E402
from refinenet.flops import count_macs  # noqa: E402
from refinenet.runtime import eager_baseline, fast_path, synchronize  # noqa: E402
from refinenet.zoo import bundled_folder, list_models  # noqa: E402

# The app opens with the zoo's first model (app.py); the benchmark times that model, with its
# bundled weights, under this name.
APP_MODEL = "refinenet-mobilenetv2"
APP_ZOO_ID = list_models()[0].model_id
# Photos of the kind the app's default model is for (read in place, never copied).
DEFAULT_REAL_IMAGES = (REPO / VOC_PSEUDO_ROOT / "val" / "images").resolve()
MOBILE_MODELS = ("lw-mobilenetv2", "refinenet-mobilenetv2")
HEAVY_MACS = 100e9  # models above this (at 512x512) get fewer repeats and a smaller batch on the CPU

# Datasheet dense bf16 tensor-core peaks (FLOP/s), only to put the measured matmul peak in context.
GPU_DATASHEET_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "T4": 65e12}


# ---------------------------------------------------------------------------------------------
# Models


def _zoo_folder(model_id: str) -> Path | None:
    folder = bundled_folder(model_id)
    return folder if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file() else None


ARCHITECTURES: dict[str, tuple[str, Callable[[], torch.nn.Module]]] = {
    "lw-mobilenetv2": ("Light-Weight RefineNet, authors' MobileNet-v2 (21 classes)",
                       lambda: refinenet.lw_refinenet_mobilenetv2(21, authors_layout=True)),
    APP_MODEL: (f"RefineNet on MobileNetV2, the app's default model ({APP_ZOO_ID})", None),
    "lw-resnet50": ("Light-Weight RefineNet-50 (21 classes)", lambda: refinenet.lw_refinenet_resnet50(21)),
    "lw-resnet101": ("Light-Weight RefineNet-101 (21 classes)", lambda: refinenet.lw_refinenet_resnet101(21)),
    "refinenet-resnet50": ("RefineNet-50 (21 classes)", lambda: refinenet.refinenet_resnet50(21)),
    "refinenet-resnet101": ("RefineNet-101 (21 classes)", lambda: refinenet.refinenet_resnet101(21)),
}


def available_models() -> list[str]:
    """The architectures, plus every zoo model whose weights are bundled (``zoo:<id>``)."""
    names = list(ARCHITECTURES)
    for entry in list_models():
        # The app's architecture already runs with the bundled weights of its zoo model.
        if _zoo_folder(entry.model_id) is not None and entry.model_id != APP_ZOO_ID:
            names.append(f"zoo:{entry.model_id}")
    return names


def build(name: str) -> tuple[torch.nn.Module, dict]:
    """The model and a description of its weights."""
    from refinenet.hub import load_folder

    if name.startswith("zoo:"):
        folder = _zoo_folder(name[4:])
        if folder is None:
            raise SystemExit(f"{name}: no bundled weights")
        return load_folder(folder), {"title": name, "weights": f"trained ({folder.relative_to(REPO)})", "trained": True}
    if name not in ARCHITECTURES:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(available_models())}")
    title, builder = ARCHITECTURES[name]
    torch.manual_seed(0)
    if name == APP_MODEL:
        folder, info = _app_model()
        return load_folder(folder), info
    model = builder()
    return calibrate(model).eval(), {
        "title": title, "weights": "random weights (architecture only; BN statistics from random images)",
        "trained": False}


def _app_model() -> tuple[Path, dict]:
    """The folder of the app's default model and its description (nothing loaded)."""
    folder = _zoo_folder(APP_ZOO_ID)
    if folder is None:
        raise SystemExit(f"the app's default model {APP_ZOO_ID} has no bundled weights")
    return folder, {"title": ARCHITECTURES[APP_MODEL][0], "weights": f"trained ({folder.relative_to(REPO)})",
                    "trained": True}


def calibrate(model: torch.nn.Module) -> torch.nn.Module:
    """Give a random backbone's BN layers the statistics of random images. With BN at mean 0 /
    variance 1 a random backbone shrinks its features at every stage (to ~1e-8 at 1/32), and
    the agreement check would then compare the finest path only."""
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Measuring


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"480x360"`` (width x height, as images are named) -> (360, 480)."""
    if "x" in text:
        width, height = (int(v) for v in text.lower().split("x"))
        return height, width
    return int(text), int(text)


def size_name(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def _proc_status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) * 1024
    return values


def _return_freed_memory() -> bool:
    """Make glibc serve allocations of 64 KiB and more with mmap and hand every freed block back
    at once (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD). Only for the memory phase: it makes
    every call page-fault its memory afresh, which would slow the timed calls."""
    if device_is_linux_glibc():
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 16)) and bool(libc.mallopt(-1, 0))
    return False


def device_is_linux_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _trim() -> None:
    gc.collect()
    if device_is_linux_glibc():
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes of memory the call adds at its peak. CUDA: the allocator's peak over what was
    allocated before. CPU: the process's resident-set high-water mark (reset first through
    /proc/self/clear_refs) over its RSS before the call; None where Linux offers neither."""
    _trim()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _proc_status()["VmRSS"]
    except OSError:
        return None
    fn()
    return max(0, _proc_status()["VmHWM"] - before)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = {"now": time.perf_counter}


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes on the chosen clock: wall time (GPU work included), or the
    process's CPU time, which a busy neighbour on the machine cannot inflate (with one torch
    thread it equals the wall time the call would take alone on one core)."""
    now = CLOCK["now"]
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def time_interleaved(paths: dict[str, Callable], x: torch.Tensor, warmup: int, repeats: int,
                     device: torch.device) -> tuple[dict[str, float], dict[str, list[float]]]:
    """First-call time and per-call times of every path, one call of each per round."""
    first = {}
    for name, fn in paths.items():
        wall = time.perf_counter()
        first[name] = _timed(lambda fn=fn: fn(x), device)
        first[name + "@wall"] = time.perf_counter() - wall  # compilation runs partly in child processes
        for _ in range(max(0, warmup - 1)):
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            times[name].append(_timed(lambda fn=fn: fn(x), device))
    return first, times


def summarise(times: list[float]) -> dict:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_s": statistics.median(ordered), "p90_s": p90, "mean_s": statistics.fmean(ordered),
            "min_s": ordered[0], "n": len(ordered)}


def agreement(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    actual, expected = actual.float().cpu(), expected.float().cpu()
    return {
        "relative_error": ((actual - expected).norm() / expected.norm()).item(),
        "max_abs_error": (actual - expected).abs().max().item(),
        "argmax_agreement": (actual.argmax(1) == expected.argmax(1)).float().mean().item(),
    }


def real_images(folder: Path | None, count: int, config) -> list[tuple[str, torch.Tensor]]:
    """Up to ``count`` images from ``folder`` (read in place, never copied), normalised with the
    model's mean/std, at their own size."""
    if folder is None or not folder.is_dir() or count <= 0:
        return []
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))[:count]
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    out = []
    for path in files:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
        out.append((path.name, (x - mean) / std))
    return out


def native_bf16_cpu() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build_paths(model: torch.nn.Module, device: torch.device, args, name: str, heavy: bool) -> tuple[dict, dict]:
    """The variants to time: name -> callable, and name -> description."""
    paths = {"eager": eager_baseline(model, device)}
    notes = {"eager": "eval, fp32, NCHW, torch.no_grad: the model as a user first runs it"}
    fast = fast_path(model, device)
    paths["fast"] = fast
    notes["fast"] = f"default fast path: {fast.describe()}"
    if device.type == "cpu":
        if name in args.ablation_models:
            paths["channels-last"] = fast_path(model, device, fold_bn=False, separable_pool=False)
            notes["channels-last"] = "inference_mode + channels-last only"
            paths["+bn-fold"] = fast_path(model, device, separable_pool=False)
            notes["+bn-fold"] = "channels-last + BN folded (no separable pool)"
        if name in args.bf16_models and native_bf16_cpu():
            paths["fast-bf16"] = fast_path(model, device, dtype="bf16")
            notes["fast-bf16"] = "fast path + bf16 autocast in the decoder (backbone fp32); opt-in on the CPU"
    else:
        paths["fast-bf16-all"] = fast_path(model, device, low_precision_backbone=True)
        notes["fast-bf16-all"] = "fast path with the backbone in bf16 too"
        paths["fast-graphs"] = fast_path(model, device, cuda_graphs=True)
        notes["fast-graphs"] = "fast path replayed from a CUDA graph per input shape"
    if name in args.compile_models:
        paths["fast-compile"] = fast_path(model, device, compile=True)
        notes["fast-compile"] = "fast path + torch.compile (inductor; CPU: weight freezing); cold cache"
    return paths, notes


def measure_model(name: str, args, device: torch.device) -> dict:
    """Everything for one model on one device (runs inside the worker subprocess)."""
    tick = time.perf_counter()
    model, info = build(name)
    macs_512 = count_macs(model, 512).total
    heavy = device.type == "cpu" and macs_512 > HEAVY_MACS and not args.repeats_forced
    warmup = 1 if heavy else args.warmup
    repeats = max(3, args.repeats // 3) if heavy else args.repeats
    batch = args.batch if args.batch else (32 if device.type == "cuda" else (2 if heavy else 4))
    record = {
        "model": name, **info, "parameters": refinenet.count_parameters(model), "macs_512": macs_512,
        "heavy": heavy, "warmup": warmup, "repeats": repeats, "batch": batch, "sizes": [], "accuracy": [],
    }
    log(f"{name}: built ({info['weights']})")
    paths, notes = build_paths(model, device, args, name, heavy)
    record["paths"] = notes
    ablation = ("channels-last", "+bn-fold")
    later_skip = ablation if args.compile_all_sizes else (*ablation, "fast-compile")
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    for index, size in enumerate(args.sizes):
        x = torch.randn(1, 3, *size, generator=generator).to(device)
        inputs[size] = x
        macs = count_macs(model, size).total
        # The per-trick paths and torch.compile at the first size only: a new size means a new
        # compilation, which the first size's first call already shows the cost of.
        timed_paths = paths if index == 0 else {p: f for p, f in paths.items() if p not in later_skip}
        log(f"{name}: timing {size_name(size)} ({', '.join(timed_paths)})")
        first, times = time_interleaved(timed_paths, x, warmup, repeats, device)
        entry = {"size": size_name(size), "macs": macs, "batch1": {}, "batched": {}}
        for path, series in times.items():
            stats = summarise(series)
            stats["first_call_s"] = first[path]
            stats["first_call_wall_s"] = first[path + "@wall"]
            stats["images_per_s"] = 1.0 / stats["mean_s"]
            stats["flops_per_s"] = 2 * macs / stats["median_s"]
            entry["batch1"][path] = stats
        record["sizes"].append(entry)

    # The larger batch, at the first size.
    size, entry = args.sizes[0], record["sizes"][0]
    xb = torch.randn(batch, 3, *size, generator=generator).to(device)
    batch_paths = {p: f for p, f in paths.items() if p not in later_skip}
    log(f"{name}: batch {batch}")
    _, btimes = time_interleaved(batch_paths, xb, 1, max(2, repeats // 2), device)
    for path, series in btimes.items():
        stats = summarise(series)
        stats["batch"] = batch
        stats["images_per_s"] = batch / stats["median_s"]
        stats["flops_per_s"] = 2 * entry["macs"] * batch / stats["median_s"]
        entry["batched"][path] = stats

    # Agreement with eager fp32, on the random input and on real images.
    log(f"{name}: agreement")
    count = 1 if heavy else args.real_count
    checks = [("random normal", inputs[size].cpu())] + real_images(args.real_images, count, model.config)
    for label, image in checks:
        image = image.to(device)
        expected = paths["eager"](image)
        for path, fn in paths.items():
            if path == "eager":
                continue
            row = {"path": path, "input": label, "size": size_name(tuple(image.shape[-2:])),
                   "trained_weights": bool(info.get("trained"))}
            row.update(agreement(fn(image), expected))
            record["accuracy"].append(row)

    # Peak memory last, with freed memory handed back to the OS at once, so that what one path
    # allocated and freed is not silently reused by the next one.
    record["memory_method"] = "rss-high-water, glibc returns freed memory" if _return_freed_memory() else \
        "rss-high-water (glibc tuning unavailable: reuse of freed memory may hide part of a peak)"
    log(f"{name}: memory")
    x = inputs[size]
    for path, fn in paths.items():
        entry["batch1"][path]["peak_memory_bytes"] = measure_peak_memory(lambda fn=fn, x=x: fn(x), device)
    for path, fn in batch_paths.items():
        entry["batched"][path]["peak_memory_bytes"] = measure_peak_memory(lambda fn=fn: fn(xb), device)
    record["seconds"] = time.perf_counter() - tick
    return record


# ---------------------------------------------------------------------------------------------
# The app, end to end


def measure_app(args, device: torch.device) -> dict:
    """Time the app as its server runs it: image file in, every panel out.

    The segment event goes through Gradio's own request pipeline (``Blocks.process_api``):
    preprocessing of the upload, the handler, and the postprocessing of all outputs, which
    registers every picture for serving. Only the HTTP transfer is left out.
    """
    try:
        import app as app_module
    except Exception as error:  # the app may be mid-rewrite; say so in the results
        return {"status": f"TODO: app.py could not be imported ({error})"}
    import asyncio

    from gradio.state_holder import SessionState

    # Nothing of torch runs on this thread: as in the server, the app's compute thread does it all
    # (a second thread's OpenMP team would slow the network down; runtime.ComputeThread says why).
    folder, info = _app_model()
    size = args.app_size
    with tempfile.TemporaryDirectory(prefix="refinenet-bench-") as tmp:
        image_path = _app_image(args.real_images, size, Path(tmp))
        demo_app = app_module.DemoApp(str(folder), str(device))
        blocks = app_module.build_demo(demo_app)
        segment_fn = next(fn for fn in blocks.fns.values() if fn.api_name == "segment")
        state_block = segment_fn.outputs[0]  # the gr.State that keeps the DemoResult
        upload = {"path": str(image_path), "orig_name": image_path.name, "meta": {"_type": "gradio.FileData"}}
        # The model and view options as a fresh page sends them: the components' initial values.
        inputs = [upload, *(component.value for component in segment_fn.inputs[1:])]
        segmenter = demo_app.models.get(str(folder))
        loop = asyncio.new_event_loop()

        network_clock = {"s": 0.0}
        inner = segmenter.model.forward

        def forward(*a, **k):
            """The network on the benchmark's clock (the app's own figures are wall time)."""
            tick = CLOCK["now"]()
            out = inner(*a, **k)
            network_clock["s"] += CLOCK["now"]() - tick
            return out

        segmenter.model.forward = forward

        state = SessionState(blocks)  # one browser session: its first request is a warm-up

        def run() -> tuple[float, float, dict, dict]:
            network_clock["s"] = 0.0
            start, wall = CLOCK["now"](), time.perf_counter()
            response = loop.run_until_complete(blocks.process_api(segment_fn, list(inputs), state=state))
            end, wall_end = CLOCK["now"](), time.perf_counter()
            seconds = dict(state[state_block._id].seconds)  # the app's own (wall-clock) breakdown
            seconds["everything else"] = wall_end - wall - sum(seconds.values())
            return end - start, network_clock["s"], seconds, response

        try:
            for _ in range(max(1, args.warmup)):
                run()
            totals, networks, parts = [], [], []
            for _ in range(args.app_repeats):
                total, network, seconds, response = run()
                totals.append(total)
                networks.append(network)
                parts.append(seconds)
        finally:
            loop.close()
            del segmenter.model.forward
        breakdown = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
        network, end_to_end = statistics.median(networks), statistics.median(totals)
        payload = len(json.dumps(response.get("data", []), default=str))
    return {"status": "ok", "model": info, "image": f"{image_path.name} ({size_name(size)})",
            "repeats": args.app_repeats, "clock": args.clock,
            "segmenter_model_class": type(segmenter.model).__name__,
            "end_to_end_s": end_to_end, "end_to_end_p90_s": summarise(totals)["p90_s"],
            "network_s": network, "overhead_s": end_to_end - network,
            "overhead_ratio": (end_to_end - network) / network,
            "breakdown_wall_s": breakdown, "response_json_bytes": payload}


def _app_image(folder: Path | None, size: tuple[int, int], tmp: Path) -> Path:
    """A real photo of the kind the app's default model is for, at the app's size (read,
    re-encoded to a temporary JPEG, never copied into the repository), else a bundled example."""
    from PIL import Image

    candidates = []
    if folder is not None and folder.is_dir():
        candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not candidates:
        candidates = [REPO / "assets" / "chelsea-the-cat.jpg"]
    image = Image.open(candidates[0]).convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    path = tmp / f"input-{size_name(size)}.jpg"
    image.save(path, quality=90)
    return path


# ---------------------------------------------------------------------------------------------
# The machine


def practical_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of the best of ``repeats`` runs of two large kernels: an ``n x n`` matmul (MKL on
    the CPU, cuBLAS on a GPU) and a 256-channel 3x3 convolution at 128x128 in channels-last
    (oneDNN's direct brgemm kernel / cuDNN: what the network's convolutions use). MKL takes a
    slower code path on AMD CPUs (about 100 GFLOP/s per core here, against about 240 for the
    convolution), so the matmul alone would understate the peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    channels, side = (256, 128) if device.type == "cpu" else (1024, 128)
    x = torch.randn(1, channels, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    kernels = {
        "matmul": (lambda: a @ b, 2 * n**3),
        "conv3x3": (lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * channels * channels * 9 * side * side),
    }
    out = {}
    with torch.inference_mode():
        for name, (fn, flops) in kernels.items():
            for _ in range(2):
                fn()
            out[name] = flops / min(_timed(fn, device) for _ in range(repeats))
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "refinenet", "benchmarks/bench.py", "app.py"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp(device: torch.device, command: str) -> dict:
    import torchvision

    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_at_start": os.getloadavg(),
        "cuda_available": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "gpu_memory_bytes": props.total_memory, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version()})
    return info


# ---------------------------------------------------------------------------------------------
# Reports


def goals(result: dict) -> list[dict]:
    """The issue's goals, checked against this run."""
    rows = []
    models = {m["model"]: m for m in result["models"] if "error" not in m}

    def ratio(model: str, size: str, path: str = "fast") -> float | None:
        entry = next((s for s in models.get(model, {}).get("sizes", []) if s["size"] == size), None)
        if entry is None or path not in entry["batch1"]:
            return None
        return entry["batch1"]["eager"]["median_s"] / entry["batch1"][path]["median_s"]

    def add(goal: str, value, target: str, met: bool | None) -> None:
        rows.append({"goal": goal, "measured": value, "target": target, "met": met})

    if result["device"] == "cpu":
        r = ratio("lw-mobilenetv2", "512x512")
        add("CPU: LW-MobileNetV2, fast / eager fp32, 512x512 batch 1", r, ">= 3x", None if r is None else r >= 3)
        r = ratio(APP_MODEL, "512x512")
        add("CPU: app's default model, fast / eager fp32, 512x512 batch 1", r, ">= 1.5x",
            None if r is None else r >= 1.5)
        app = result.get("app", {})
        if app.get("status") == "ok":
            add("CPU: visualisation overhead / network time (app, end to end)", app["overhead_ratio"], "<= 0.3",
                app["overhead_ratio"] <= 0.3)
            add(f"CPU: app end to end, image in -> every output rendered ({app['image']})", app["end_to_end_s"],
                "<= 0.5 s", app["end_to_end_s"] <= 0.5)
        else:
            add("CPU: app end to end", None, "<= 0.5 s", None)
    else:
        entry = next((s for s in models.get("refinenet-resnet101", {}).get("sizes", []) if s["size"] == "512x512"),
                     None)
        if entry is not None:
            best = min((p for p in entry["batch1"] if p != "eager"), key=lambda p: entry["batch1"][p]["median_s"])
            t = entry["batch1"][best]["median_s"]
            add(f"GPU: RefineNet-101 512x512 batch 1, bf16 ({best})", t, "<= 5 ms", t <= 0.005)
            r = entry["batch1"]["eager"]["median_s"] / t
            add("GPU: RefineNet-101, fast / eager fp32", r, ">= 3x", r >= 3)
        entry = next((s for s in models.get("lw-mobilenetv2", {}).get("sizes", []) if s["size"] == "512x512"), None)
        if entry is not None and entry["batched"]:
            best = max(entry["batched"].values(), key=lambda s: s["images_per_s"])
            add(f"GPU: LW-MobileNetV2 images/s at batch {best['batch']}", best["images_per_s"], ">= 1000",
                best["images_per_s"] >= 1000)
    worst: dict[str, dict] = {}
    for model in models.values():
        for row in model["accuracy"]:
            low = "bf16" in row["path"] or (result["device"] == "cuda" and row["path"] != "eager")
            if low and not row.get("trained_weights"):
                continue  # random weights: near-ties everywhere, listed in the table but not a goal
            key = "bf16 paths (trained weights)" if low else "fp32 paths (every model)"
            w = worst.setdefault(key, {"relative_error": 0.0, "argmax_agreement": 1.0})
            w["relative_error"] = max(w["relative_error"], row["relative_error"])
            w["argmax_agreement"] = min(w["argmax_agreement"], row["argmax_agreement"])
    for key, w in sorted(worst.items(), reverse=True):
        limit = 1e-2 if key.startswith("bf16") else 1e-4
        add(f"accuracy, {key}: worst relative error of the logits", w["relative_error"], f"<= {limit:g}",
            w["relative_error"] <= limit)
        add(f"accuracy, {key}: worst argmax agreement", w["argmax_agreement"], ">= 0.995",
            w["argmax_agreement"] >= 0.995)
    return rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}"


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) < 1e-2:
            return f"{value:.2e}"
        return f"{value:.3g}"
    return str(value)


def markdown(result: dict) -> str:
    s = result["stamp"]
    device = result["device"]
    lines = [f"# Inference benchmark: {device.upper()}", ""]
    lines += [f"- Command: `{s['command']}`", f"- Commit: `{s['commit']}`", f"- Date: {s['date']}"]
    if device == "cpu":
        lines.append(f"- Device: {s['cpu']}, {s['cpu_cores']} cores, {s['torch_threads']} torch threads, "
                     f"{s['cpu_capability']}")
    else:
        lines.append(f"- Device: {s.get('gpu')} (CUDA {s.get('cuda')}, cuDNN {s.get('cudnn')}); host {s['cpu']}")
    lines.append(f"- torch {s['torch']}, torchvision {s['torchvision']}, numpy {s['numpy']}, python {s['python']}")
    lines.append(f"- Load average at start: {', '.join(f'{v:.2f}' for v in s['load_average_at_start'])}")
    if result.get("clock") == "cpu":
        lines.append(f"- Clock: **CPU time** of the benchmark process ({s['torch_threads']} torch thread(s)), not wall "
                     "time: a neighbour on the machine cannot inflate it. With one thread it is the time the call "
                     "takes alone on one core.")
    else:
        lines.append("- Clock: wall time.")
    peak = result["peak"]
    lines.append("- Practical peak (best of a large matmul and a large 3x3 convolution): " + ", ".join(
                     f"{k} {v / 1e9:.0f} GFLOP/s (" + ", ".join(f"{kn} {kv / 1e9:.0f}" for kn, kv in
                                                          peak["kernels"][k].items()) + ")"
                     for k, v in peak["flops_per_s"].items())
                 + (f"; datasheet bf16 {peak['datasheet_bf16'] / 1e12:.0f} TFLOP/s" if peak.get("datasheet_bf16")
                    else ""))
    for note in result["notes"]:
        lines.append(f"- {note}")
    lines += ["", "## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {_fmt(g['measured'])} | {g['target']} | {met} |")

    lines += ["", "## Speed-up of each path over eager fp32 (median latency, batch 1)", ""]
    all_paths = []
    for m in result["models"]:
        for p in m.get("paths", {}):
            if p not in all_paths:
                all_paths.append(p)
    others = [p for p in all_paths if p != "eager"]
    lines += ["| model | size | eager ms | " + " | ".join(others) + " |", "|---|---|---|" + "---|" * len(others)]
    for m in result["models"]:
        for entry in m.get("sizes", []):
            b1 = entry["batch1"]
            cells = [f"{b1['eager']['median_s'] / b1[p]['median_s']:.2f}x" if p in b1 else "-" for p in others]
            lines.append(f"| {m['model']} | {entry['size']} | {_ms(b1['eager']['median_s'])} | " + " | ".join(cells)
                         + " |")

    lines += ["", "## Latency, throughput, memory, FLOP/s", "",
              "| model | size | path | median ms | p90 ms | first call ms | img/s (b1) | img/s (batch) | "
              "peak MB (b1) | peak MB (batch) | GFLOP/s | % of peak |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    above_peak = False
    for m in result["models"]:
        for entry in m.get("sizes", []):
            for path, st in entry["batch1"].items():
                batched = entry["batched"].get(path)
                peak_key = "bf16" if "bf16" in path or (device == "cuda" and path != "eager") else "fp32"
                frac = st["flops_per_s"] / peak["flops_per_s"][peak_key]
                above_peak = above_peak or round(100 * frac) > 100
                batch_rate = f"{batched['images_per_s']:.1f} (b{batched['batch']})" if batched else "-"
                batch_memory = _mb(batched.get("peak_memory_bytes")) if batched else "-"
                lines.append(
                    f"| {m['model']} | {entry['size']} | {path} | {_ms(st['median_s'])} | {_ms(st['p90_s'])} | "
                    f"{_ms(st['first_call_s'])} | {st['images_per_s']:.1f} | {batch_rate} | "
                    f"{_mb(st.get('peak_memory_bytes'))} | {batch_memory} | "
                    f"{st['flops_per_s'] / 1e9:.0f} | {100 * frac:.0f} % |")

    if above_peak:
        lines += ["", "A share above 100 % means the practical peak, measured once at the start of the run, "
                  "caught the shared host at a busier moment than the model's own timing did (and the "
                  "fast path's convolutions can beat the single large convolution used as the reference)."]
    lines += ["", "## Agreement with eager fp32", "",
              "Relative error = ||path - eager|| / ||eager|| over all logits; argmax agreement = share of "
              "logit pixels (1/4 of the input) with the same class. With random weights most pixels are near-ties "
              "between classes, so bf16 rows of random-weight models are shown but not counted in the goals.", "",
              "| model | weights | path | input | size | relative error | max abs error | argmax agreement |",
              "|---|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        for row in m.get("accuracy", []):
            weights = "trained" if row.get("trained_weights") else "random"
            lines.append(f"| {m['model']} | {weights} | {row['path']} | {row['input']} | {row['size']} | "
                         f"{row['relative_error']:.2e} | {row['max_abs_error']:.2e} | "
                         f"{100 * row['argmax_agreement']:.3f} % |")

    app = result.get("app")
    if app is not None:
        lines += ["", "## The app, end to end", ""]
        if app.get("status") != "ok":
            lines.append(f"{app.get('status')}")
        else:
            lines += [
                f"The app's segment event (`DemoApp.segment`, app.py) run through Gradio's own request pipeline "
                f"(`Blocks.process_api`: upload preprocessing, the handler, postprocessing of every output, which "
                f"registers each picture for serving; only the HTTP transfer is left out) on {app['image']}, model: "
                f"{app['model']['weights']}, network run as `{app['segmenter_model_class']}`. Median of "
                f"{app['repeats']} runs of one session after its first request. Overhead = end to end - network: "
                "loading and resizing the "
                "image, post-processing the scores, caching the activations, rendering every panel and Gradio's "
                f"output processing. Response: {app['response_json_bytes'] / 1024:.0f} KiB of JSON (the legend "
                "carries its pictures inline) plus the picture files.",
                "",
                "| end to end ms | p90 ms | network ms | overhead ms | overhead / network |",
                "|---|---|---|---|---|",
                f"| {_ms(app['end_to_end_s'])} | {_ms(app['end_to_end_p90_s'])} | {_ms(app['network_s'])} | "
                f"{_ms(app['overhead_s'])} | {app['overhead_ratio']:.2f} |",
                "",
                "Where the time goes (the app's own wall-clock figures, ms; 'everything else' is mostly Gradio's "
                "output processing): "
                + ", ".join(f"{k} {1000 * v:.1f}" for k, v in app["breakdown_wall_s"].items()),
                "",
            ]

    lines += ["", "## Models and paths", ""]
    for m in result["models"]:
        if "error" in m:
            lines.append(f"- **{m['model']}**: failed: {m['error']}")
            continue
        load = ", ".join(f"{v:.2f}" for v in m.get("load_average_after", ()))
        lines.append(f"- **{m['model']}**: {m['title']}; {m['parameters'] / 1e6:.2f} M parameters, "
                     f"{m['macs_512'] / 1e9:.1f} G multiply-adds at 512x512; {m['weights']}; "
                     f"warm-up {m['warmup']}, repeats {m['repeats']}, batch {m['batch']}; {m['seconds']:.0f} s; "
                     f"load average after it: {load}")
    paths_seen = {}
    for m in result["models"]:
        paths_seen.update(m.get("paths", {}))
    lines.append("")
    for path, note in paths_seen.items():
        lines.append(f"- `{path}`: {note}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Orchestration


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    CLOCK["now"] = CLOCKS[args.clock]
    device = torch.device(args.device)
    if args.worker == "app":
        result = measure_app(args, device)
    else:
        try:
            result = measure_model(args.worker, args, device)
        except Exception as error:  # one model failing must not end the run
            import traceback

            traceback.print_exc()
            result = {"model": args.worker, "error": f"{type(error).__name__}: {error}"}
    Path(args.result_file).write_text(json.dumps(result))


def spawn(job: str, device: str, argv: list[str], timeout: float, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="refinenet-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # cold compile, honestly timed
        # numpy's BLAS (the app's PCA) gets the same thread count as torch.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", job, "--device", device,
                   "--result-file", str(out)]
        tick = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": job, "error": f"timed out after {timeout:.0f} s"}
        print(f"  {job} on {device}: {time.perf_counter() - tick:.0f} s", flush=True)
        if done.returncode != 0 or not out.is_file():
            return {"model": job, "error": f"worker exited with status {done.returncode}"}
        return json.loads(out.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all",
                        help=f"comma-separated, or 'all' ({', '.join(ARCHITECTURES)}, and zoo:<id> for bundled "
                             "zoo models, which 'all' includes)")
    parser.add_argument("--sizes", default="512,480x360", help="input sizes, N or WxH (default: 512,480x360)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per path (default 10; heavy models "
                                                                  "on the CPU get a third)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per path first (default 2)")
    parser.add_argument("--batch", type=int, default=None, help="the larger batch (default: CPU 4, heavy 2; GPU 32)")
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (CPU, and the GPU when present)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on the CPU")
    parser.add_argument("--compile", default=",".join(MOBILE_MODELS),
                        help="models that also get a torch.compile path ('none' for none)")
    parser.add_argument("--bf16", default=",".join(MOBILE_MODELS),
                        help="models that also get the (opt-in) CPU bf16 path ('none' for none)")
    parser.add_argument("--ablation", default=",".join(MOBILE_MODELS),
                        help="models that also get the per-trick paths: channels-last only, +BN folding ('none')")
    parser.add_argument("--budget", type=float, default=660,
                        help="seconds; models not started within it are skipped and listed (default 660)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or process CPU time (robust on a shared machine; use with --threads 1)")
    parser.add_argument("--compile-all-sizes", action="store_true",
                        help="also time the compiled path at the other sizes and the larger batch (each recompiles)")
    parser.add_argument("--no-app", dest="app", action="store_false", help="skip the app's end-to-end timing")
    parser.add_argument("--app-size", default="480x360", help="image size for the app timing (WxH)")
    parser.add_argument("--app-repeats", type=int, default=5)
    parser.add_argument("--real-images", type=Path, default=DEFAULT_REAL_IMAGES,
                        help="folder of real images for the agreement check (read in place)")
    parser.add_argument("--real-count", type=int, default=2, help="real images per model (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    parser.add_argument("--name", default=None, help="file stem (default: the device, '-quick' for --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="the two mobile models, 3 repeats, no compile: a smoke run of a few minutes")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the results' notes, e.g. what else ran on the machine (repeatable)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model before giving up")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats_forced = args.repeats is not None and not args.quick
    if args.quick:
        args.models = args.models if args.models != "all" else f"lw-mobilenetv2,{APP_MODEL}"
        args.repeats = args.repeats or 3
        args.warmup = min(args.warmup, 1)
        args.compile = "none" if "--compile" not in (argv or sys.argv) else args.compile
        args.real_count = min(args.real_count, 1)
        args.app_repeats = min(args.app_repeats, 2)
    args.repeats = args.repeats or 10
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    args.app_size = parse_size(args.app_size)
    args.compile_models = [] if args.compile == "none" else args.compile.split(",")
    args.bf16_models = [] if args.bf16 == "none" else args.bf16.split(",")
    args.ablation_models = [] if args.ablation == "none" else args.ablation.split(",")
    if args.real_images is not None and not args.real_images.is_dir():
        args.real_images = None
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if args.worker:
        run_worker(args)
        return 0
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA GPU here")
        devices.remove("cuda")
    models = available_models() if args.models == "all" else [m.strip() for m in args.models.split(",")]
    command = "python benchmarks/bench.py " + " ".join(shlex.quote(a) for a in raw)
    # Everything but the orchestration options goes to the workers as given.
    forward = [a for a in raw if a not in ("--quick",)]
    if args.quick:
        forward += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--compile", args.compile,
                    "--real-count", str(args.real_count), "--app-repeats", str(args.app_repeats)]
    args.out.mkdir(parents=True, exist_ok=True)
    for device_name in devices:
        device = torch.device(device_name)
        torch.set_num_threads(args.threads)
        CLOCK["now"] = CLOCKS[args.clock]
        print(f"benchmark on {device_name}: {', '.join(models)}", flush=True)
        n = 8192 if device.type == "cuda" else 2048  # long enough that timing overhead does not count
        kernels = {"fp32": practical_peak(device, torch.float32, n)}
        if device.type == "cuda" or native_bf16_cpu():
            kernels["bf16"] = practical_peak(device, torch.bfloat16, n)
        else:
            kernels["bf16"] = kernels["fp32"]
        peak = {"n": n, "kernels": kernels, "flops_per_s": {k: max(v.values()) for k, v in kernels.items()}}
        notes = [
            "Paths are timed interleaved, one call of each per round; latency = median (and p90) of the rounds.",
            "FLOP/s = 2 x conv multiply-adds (refinenet.flops.count_macs) / median latency; '% of peak' is against "
            "the practical peak above, not a datasheet figure.",
            "Peak memory: CPU = rise of the process's resident-set high-water mark during one call (reset through "
            "/proc/self/clear_refs); CUDA = torch.cuda.max_memory_allocated over what was allocated before.",
            "torch.compile runs with an empty inductor cache: its first call is the cold compile a fresh server pays.",
        ]
        if device.type == "cpu":
            if not torch.cuda.is_available():
                notes.append("No GPU was available to this run: GPU results (gpu.json/gpu.md) were not produced.")
            if args.bf16_models and not native_bf16_cpu():
                notes.append("This CPU has no native bf16 (avx512_bf16/amx_bf16): the bf16 path was skipped.")
        else:
            notes.append("eager runs with PyTorch's defaults: cuDNN convolutions may use TF32 "
                         f"(torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}).")
            name = torch.cuda.get_device_name(device)
            datasheet = next((v for k, v in GPU_DATASHEET_BF16.items() if k in name), None)
            if datasheet:
                peak["datasheet_bf16"] = datasheet
        notes += args.note
        result = {"device": device_name, "clock": args.clock, "stamp": stamp(device, command), "peak": peak,
                  "notes": notes,
                  "models": []}
        started = time.perf_counter()
        jobs = list(models)
        if args.app and device.type == "cpu":
            # The app right after the two mobile models: it matters more than the ResNet timings.
            position = max((jobs.index(m) + 1 for m in MOBILE_MODELS if m in jobs), default=0)
            jobs.insert(position, "app")
        for job in jobs:
            spent = time.perf_counter() - started
            if spent > args.budget:
                record = {"model": job, "error": f"skipped: the time budget of {args.budget:.0f} s was spent"}
                if job == "app":
                    record = {"status": f"TODO: {record['error']}"}
            else:
                record = spawn(job, device_name, forward, args.timeout, args.threads)
            record["load_average_after"] = os.getloadavg()  # evidence of what else ran meanwhile
            if job == "app":
                result["app"] = record if "error" not in record else {"status": f"failed: {record['error']}"}
            else:
                result["models"].append(record)
        result["seconds"] = time.perf_counter() - started
        result["goals"] = goals(result)
        stem = args.name or (device_name + ("-quick" if args.quick else ""))
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(result))
        print(f"wrote {args.out / stem}.json and .md", flush=True)
        for g in result["goals"]:
            print(f"  {g['goal']}: {_fmt(g['measured'])} (target {g['target']}, met: {g['met']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
