"""The benchmark's results files: the goals checked against a run, and the markdown report
(``bench.py`` writes the JSON record beside it as it is)."""

from __future__ import annotations

from measure import APP_MODEL


def goals(result: dict) -> list[dict]:
    """The performance and agreement goals, checked against this run (``met`` is None where the
    run did not measure what a goal needs)."""
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
        add(
            "CPU: app's default model, fast / eager fp32, 512x512 batch 1",
            r,
            ">= 1.5x",
            None if r is None else r >= 1.5,
        )
        app = result.get("app", {})
        if app.get("status") == "ok":
            add(
                "CPU: visualisation overhead / network time (app, end to end)",
                app["overhead_ratio"],
                "<= 0.3",
                app["overhead_ratio"] <= 0.3,
            )
            add(
                f"CPU: app end to end, image in -> every output rendered ({app['image']})",
                app["end_to_end_s"],
                "<= 0.5 s",
                app["end_to_end_s"] <= 0.5,
            )
        else:
            add("CPU: app end to end", None, "<= 0.5 s", None)
    else:
        entry = next(
            (s for s in models.get("refinenet-resnet101", {}).get("sizes", []) if s["size"] == "512x512"), None
        )
        if entry is not None:
            best = min((p for p in entry["batch1"] if p != "eager"), key=lambda p: entry["batch1"][p]["median_s"])
            t = entry["batch1"][best]["median_s"]
            add(f"GPU: RefineNet-101 512x512 batch 1, bf16 ({best})", t, "<= 5 ms", t <= 0.005)
            r = entry["batch1"]["eager"]["median_s"] / t
            add("GPU: RefineNet-101, fast / eager fp32", r, ">= 3x", r >= 3)
        entry = next((s for s in models.get("lw-mobilenetv2", {}).get("sizes", []) if s["size"] == "512x512"), None)
        if entry is not None and entry["batched"]:
            best = max(entry["batched"].values(), key=lambda s: s["images_per_s"])
            add(
                f"GPU: LW-MobileNetV2 images/s at batch {best['batch']}",
                best["images_per_s"],
                ">= 1000",
                best["images_per_s"] >= 1000,
            )
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
        add(
            f"accuracy, {key}: worst relative error of the logits",
            w["relative_error"],
            f"<= {limit:g}",
            w["relative_error"] <= limit,
        )
        add(
            f"accuracy, {key}: worst argmax agreement",
            w["argmax_agreement"],
            ">= 0.995",
            w["argmax_agreement"] >= 0.995,
        )
    return rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}"


def fmt(value) -> str:
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
        lines.append(
            f"- Device: {s['cpu']}, {s['cpu_cores']} cores, {s['torch_threads']} torch threads, {s['cpu_capability']}"
        )
    else:
        lines.append(f"- Device: {s.get('gpu')} (CUDA {s.get('cuda')}, cuDNN {s.get('cudnn')}); host {s['cpu']}")
    lines.append(f"- torch {s['torch']}, torchvision {s['torchvision']}, numpy {s['numpy']}, python {s['python']}")
    lines.append(f"- Load average at start: {', '.join(f'{v:.2f}' for v in s['load_average_at_start'])}")
    if result.get("clock") == "cpu":
        lines.append(
            f"- Clock: **CPU time** of the benchmark process ({s['torch_threads']} torch thread(s)), not wall "
            "time: a neighbour on the machine cannot inflate it. With one thread it is the time the call "
            "takes alone on one core."
        )
    else:
        lines.append("- Clock: wall time.")
    peak = result["peak"]
    lines.append(
        "- Practical peak (best of a large matmul and a large 3x3 convolution): "
        + ", ".join(
            f"{k} {v / 1e9:.0f} GFLOP/s ("
            + ", ".join(f"{kn} {kv / 1e9:.0f}" for kn, kv in peak["kernels"][k].items())
            + ")"
            for k, v in peak["flops_per_s"].items()
        )
        + (f"; datasheet bf16 {peak['datasheet_bf16'] / 1e12:.0f} TFLOP/s" if peak.get("datasheet_bf16") else "")
    )
    for note in result["notes"]:
        lines.append(f"- {note}")
    lines += ["", "## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {fmt(g['measured'])} | {g['target']} | {met} |")

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
            lines.append(
                f"| {m['model']} | {entry['size']} | {_ms(b1['eager']['median_s'])} | " + " | ".join(cells) + " |"
            )

    lines += [
        "",
        "## Latency, throughput, memory, FLOP/s",
        "",
        "| model | size | path | median ms | p90 ms | first call ms | img/s (b1) | img/s (batch) | "
        "peak MB (b1) | peak MB (batch) | GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
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
                    f"{st['flops_per_s'] / 1e9:.0f} | {100 * frac:.0f} % |"
                )

    if above_peak:
        lines += [
            "",
            "A share above 100 % means the practical peak, measured once at the start of the run, "
            "caught the shared host at a busier moment than the model's own timing did (and the "
            "fast path's convolutions can beat the single large convolution used as the reference).",
        ]
    lines += [
        "",
        "## Agreement with eager fp32",
        "",
        "Relative error = ||path - eager|| / ||eager|| over all logits; argmax agreement = share of "
        "logit pixels (1/4 of the input) with the same class. With random weights most pixels are near-ties "
        "between classes, so bf16 rows of random-weight models are shown but not counted in the goals.",
        "",
        "| model | weights | path | input | size | relative error | max abs error | argmax agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        for row in m.get("accuracy", []):
            weights = "trained" if row.get("trained_weights") else "random"
            lines.append(
                f"| {m['model']} | {weights} | {row['path']} | {row['input']} | {row['size']} | "
                f"{row['relative_error']:.2e} | {row['max_abs_error']:.2e} | "
                f"{100 * row['argmax_agreement']:.3f} % |"
            )

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
                "output processing): " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in app["breakdown_wall_s"].items()),
                "",
            ]

    lines += ["", "## Models and paths", ""]
    for m in result["models"]:
        if "error" in m:
            lines.append(f"- **{m['model']}**: failed: {m['error']}")
            continue
        load = ", ".join(f"{v:.2f}" for v in m.get("load_average_after", ()))
        lines.append(
            f"- **{m['model']}**: {m['title']}; {m['parameters'] / 1e6:.2f} M parameters, "
            f"{m['macs_512'] / 1e9:.1f} G multiply-adds at 512x512; {m['weights']}; "
            f"warm-up {m['warmup']}, repeats {m['repeats']}, batch {m['batch']}; {m['seconds']:.0f} s; "
            f"load average after it: {load}"
        )
    paths_seen = {}
    for m in result["models"]:
        paths_seen.update(m.get("paths", {}))
    lines.append("")
    for path, note in paths_seen.items():
        lines.append(f"- `{path}`: {note}")
    return "\n".join(lines) + "\n"
