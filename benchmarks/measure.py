"""The benchmark's measurements: the models it times, the paths it compares, and how it times
them (latency, throughput, peak memory, FLOP/s, agreement with eager fp32, the app end to end,
the machine's practical peak). Everything here runs inside a worker process of ``bench.py``,
one model per process; ``report.py`` turns the records into the results files.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # app.py lives at the repository root, and refinenet is imported from this tree
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import refinenet  # noqa: E402
from refinenet.data import VOC_PSEUDO_ROOT  # noqa: E402
from refinenet.flops import count_macs  # noqa: E402
from refinenet.folder import load_folder  # noqa: E402
from refinenet.runtime import eager_baseline, fast_path, synchronize  # noqa: E402
from refinenet.zoo import bundled_folder, list_pretrained  # noqa: E402

# The app opens with the zoo's first model (app.py); the benchmark times that model, with its
# bundled weights, under this name.
APP_MODEL = "refinenet-mobilenetv2"
APP_ZOO_ID = list_pretrained()[0].model_id
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


# The benchmark's model names -> (title, architecture of refinenet.list_models(), builder options), all
# at 21 classes; the app's model has no architecture here: it runs with its bundled trained weights.
ARCHITECTURES: dict[str, tuple[str, str | None, dict]] = {
    "lw-mobilenetv2": (
        "Light-Weight RefineNet, authors' MobileNet-v2 (21 classes)",
        "lw_refinenet_mobilenetv2",
        {"authors_layout": True},
    ),
    APP_MODEL: (f"RefineNet on MobileNetV2, the app's default model ({APP_ZOO_ID})", None, {}),
    "lw-resnet50": ("Light-Weight RefineNet-50 (21 classes)", "lw_refinenet_resnet50", {}),
    "lw-resnet101": ("Light-Weight RefineNet-101 (21 classes)", "lw_refinenet_resnet101", {}),
    "refinenet-resnet50": ("RefineNet-50 (21 classes)", "refinenet_resnet50", {}),
    "refinenet-resnet101": ("RefineNet-101 (21 classes)", "refinenet_resnet101", {}),
}


def available_models() -> list[str]:
    """The architectures, plus every zoo model whose weights are bundled (``zoo:<id>``)."""
    names = list(ARCHITECTURES)
    for entry in list_pretrained():
        # The app's architecture already runs with the bundled weights of its zoo model.
        if _zoo_folder(entry.model_id) is not None and entry.model_id != APP_ZOO_ID:
            names.append(f"zoo:{entry.model_id}")
    return names


def build(name: str) -> tuple[torch.nn.Module, dict]:
    """The model and a description of its weights."""
    if name.startswith("zoo:"):
        folder = _zoo_folder(name[4:])
        if folder is None:
            raise SystemExit(f"{name}: no bundled weights")
        return load_folder(folder), {"title": name, "weights": f"trained ({folder.relative_to(REPO)})", "trained": True}
    if name not in ARCHITECTURES:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(available_models())}")
    title, architecture, options = ARCHITECTURES[name]
    torch.manual_seed(0)
    if name == APP_MODEL:
        folder, info = _app_model()
        return load_folder(folder), info
    model = refinenet.get_model(architecture, num_classes=21, **options)
    return calibrate(model).eval(), {
        "title": title,
        "weights": "random weights (architecture only; BN statistics from random images)",
        "trained": False,
    }


def _app_model() -> tuple[Path, dict]:
    """The folder of the app's default model and its description (nothing loaded)."""
    folder = _zoo_folder(APP_ZOO_ID)
    if folder is None:
        raise SystemExit(f"the app's default model {APP_ZOO_ID} has no bundled weights")
    return folder, {
        "title": ARCHITECTURES[APP_MODEL][0],
        "weights": f"trained ({folder.relative_to(REPO)})",
        "trained": True,
    }


def calibrate(model: torch.nn.Module) -> torch.nn.Module:
    """Give a random backbone's BN layers the statistics of random images. With BN at mean 0 /
    variance 1 a random backbone shrinks its features at every stage, to almost nothing at 1/32,
    and the agreement check would then compare the finest path only."""
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


def time_interleaved(
    paths: dict[str, Callable], x: torch.Tensor, warmup: int, repeats: int, device: torch.device
) -> tuple[dict[str, float], dict[str, list[float]]]:
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
    return {
        "median_s": statistics.median(ordered),
        "p90_s": p90,
        "mean_s": statistics.fmean(ordered),
        "min_s": ordered[0],
        "n": len(ordered),
    }


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
        "model": name,
        **info,
        "parameters": refinenet.count_parameters(model),
        "macs_512": macs_512,
        "heavy": heavy,
        "warmup": warmup,
        "repeats": repeats,
        "batch": batch,
        "sizes": [],
        "accuracy": [],
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
            row = {
                "path": path,
                "input": label,
                "size": size_name(tuple(image.shape[-2:])),
                "trained_weights": bool(info.get("trained")),
            }
            row.update(agreement(fn(image), expected))
            record["accuracy"].append(row)

    # Peak memory last, with freed memory handed back to the OS at once, so that what one path
    # allocated and freed is not silently reused by the next one.
    record["memory_method"] = (
        "rss-high-water, glibc returns freed memory"
        if _return_freed_memory()
        else "rss-high-water (glibc tuning unavailable: reuse of freed memory may hide part of a peak)"
    )
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
    except Exception as error:  # an app that cannot be imported is reported, not fatal to the run
        return {"status": f"TODO: app.py could not be imported ({error})"}
    import asyncio

    from gradio.state_holder import SessionState

    # Nothing of torch runs on this thread: as in the server, the app's compute thread does it all
    # (a second thread's OpenMP team would slow the network down; serving.ComputeThread says why).
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
    return {
        "status": "ok",
        "model": info,
        "image": f"{image_path.name} ({size_name(size)})",
        "repeats": args.app_repeats,
        "clock": args.clock,
        "segmenter_model_class": type(segmenter.model).__name__,
        "end_to_end_s": end_to_end,
        "end_to_end_p90_s": summarise(totals)["p90_s"],
        "network_s": network,
        "overhead_s": end_to_end - network,
        "overhead_ratio": (end_to_end - network) / network,
        "breakdown_wall_s": breakdown,
        "response_json_bytes": payload,
    }


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
    slower code path on AMD CPUs, well below what oneDNN's convolutions reach there, so the
    matmul alone would understate the peak."""
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
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--",
                "refinenet",
                "benchmarks/bench.py",
                "benchmarks/measure.py",
                "benchmarks/report.py",
                "app.py",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
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
        info.update(
            {
                "gpu": props.name,
                "gpu_memory_bytes": props.total_memory,
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        )
    return info
