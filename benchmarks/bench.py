"""Inference benchmark: the plain eager fp32 baseline against the project's fast path.

A benchmark, not a test: it measures and writes ``benchmarks/results/<device>.json`` and
``<device>.md``, stamped with the machine, library versions, commit and the exact command.

    python benchmarks/bench.py                      # full run, CPU (and GPU when present), ~10 min on 2 cores
    python benchmarks/bench.py --quick              # two mobile models, few repeats (~2 min)
    python benchmarks/bench.py --models lw-mobilenetv2 --sizes 512 --repeats 20

For every model and size it reports latency (median and p90 of repeated calls after warm-up),
throughput at batch 1 and at a larger batch, peak memory, achieved FLOP/s (2 x multiply-adds of
the conv layers / median time) against the device's practical peak (the best of a large matmul
and a large convolution measured on the same device), and the agreement of every fast variant
with eager fp32 (relative error of the logits, argmax agreement) on random and real images.
Paths are timed *interleaved* (one call of each per round), so that drifting load on a shared
machine hits all of them alike.

Each model runs in its own subprocess: the memory high-water mark then belongs to that model,
and one model running out of memory does not end the run.

This file is the command line and the orchestration (one worker process per model and device);
``measure.py`` holds the models and the measurements, ``report.py`` the goals and the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from measure import (
    APP_MODEL,
    ARCHITECTURES,
    CLOCK,
    CLOCKS,
    DEFAULT_REAL_IMAGES,
    GPU_DATASHEET_BF16,
    MOBILE_MODELS,
    REPO,
    available_models,
    measure_app,
    measure_model,
    native_bf16_cpu,
    parse_size,
    practical_peak,
    stamp,
)
from report import fmt, goals, markdown

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
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            *argv,
            "--worker",
            job,
            "--device",
            device,
            "--result-file",
            str(out),
        ]
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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        default="all",
        help=f"comma-separated, or 'all' ({', '.join(ARCHITECTURES)}, and zoo:<id> for bundled "
        "zoo models, which 'all' includes)",
    )
    parser.add_argument("--sizes", default="512,480x360", help="input sizes, N or WxH (default: 512,480x360)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per path (default 10; heavy models on the CPU get a third)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per path first (default 2)")
    parser.add_argument("--batch", type=int, default=None, help="the larger batch (default: CPU 4, heavy 2; GPU 32)")
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (CPU, and the GPU when present)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on the CPU")
    parser.add_argument(
        "--compile", default=",".join(MOBILE_MODELS), help="models that also get a torch.compile path ('none' for none)"
    )
    parser.add_argument(
        "--bf16",
        default=",".join(MOBILE_MODELS),
        help="models that also get the (opt-in) CPU bf16 path ('none' for none)",
    )
    parser.add_argument(
        "--ablation",
        default=",".join(MOBILE_MODELS),
        help="models that also get the per-trick paths: channels-last only, +BN folding ('none')",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=660,
        help="seconds; models not started within it are skipped and listed (default 660)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (robust on a shared machine; use with --threads 1)",
    )
    parser.add_argument(
        "--compile-all-sizes",
        action="store_true",
        help="also time the compiled path at the other sizes and the larger batch (each recompiles)",
    )
    parser.add_argument("--no-app", dest="app", action="store_false", help="skip the app's end-to-end timing")
    parser.add_argument("--app-size", default="480x360", help="image size for the app timing (WxH)")
    parser.add_argument("--app-repeats", type=int, default=5)
    parser.add_argument(
        "--real-images",
        type=Path,
        default=DEFAULT_REAL_IMAGES,
        help="folder of real images for the agreement check (read in place)",
    )
    parser.add_argument("--real-count", type=int, default=2, help="real images per model (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    parser.add_argument("--name", default=None, help="file stem (default: the device, '-quick' for --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the two mobile models, 3 repeats, no compile: a smoke run of a few minutes",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a line for the results' notes, e.g. what else ran on the machine (repeatable)",
    )
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
        forward += [
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--compile",
            args.compile,
            "--real-count",
            str(args.real_count),
            "--app-repeats",
            str(args.app_repeats),
        ]
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
            notes.append(
                "eager runs with PyTorch's defaults: cuDNN convolutions may use TF32 "
                f"(torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32})."
            )
            name = torch.cuda.get_device_name(device)
            datasheet = next((v for k, v in GPU_DATASHEET_BF16.items() if k in name), None)
            if datasheet:
                peak["datasheet_bf16"] = datasheet
        notes += args.note
        result = {
            "device": device_name,
            "clock": args.clock,
            "stamp": stamp(device, command),
            "peak": peak,
            "notes": notes,
            "models": [],
        }
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
            print(f"  {g['goal']}: {fmt(g['measured'])} (target {g['target']}, met: {g['met']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
