"""What the benchmarks share: the machine's name, interleaved repeats, one file per machine, a summary.

A speed figure holds for one machine, so every bench writes ``results/bench/<machine>/<bench>.md`` and
``.json``, where ``<machine>`` names the device and the CPU features that change the answer (AVX-512,
native bf16, AMX; the thread count). ``results/bench/README.md`` shows every machine measured side by side.
Each figure is the median over repeats run interleaved (method A, B, C, A, B, C, ...), so a burst of load
hits every method alike; the spread (min-max) and the 1-minute load average before and after are kept.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from . import io
from .models import create_model
from .provenance import REPO_ROOT, cpu_flags, cpu_name, provenance

BENCH_DIR = REPO_ROOT / "results" / "bench"
# The CPU features that decide which kernels torch runs (fp32 AVX-512 vs AVX2; bf16 native or emulated).
def machine_id(device: torch.device) -> str:
    """File-safe name of what was measured: 'cuda-nvidia-h200' or 'cpu-amd-epyc-avx512_bf16-2t'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        flags = cpu_flags()
        best = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "generic")
        name = f"{cpu_name()} {best} {torch.get_num_threads()}t"
    return f"{device.type}-" + re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


def machine_facts(device: torch.device) -> dict:
    facts = {"machine": machine_id(device), "device_type": device.type, "cpu": cpu_name(),
             "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(), "cores_visible": os.cpu_count()}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Measured(float):
    """Returned by a benchmarked function that timed itself (e.g. in another process): its seconds."""


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: bool = True, progress: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds of one call each, in turn (a function that
    returns :class:`Measured` reports its own time)."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            out = fn()
            sync(device)
            times[name].append(float(out) if isinstance(out, Measured) else time.perf_counter() - t)
            if progress:
                print(f"  repeat {r + 1}/{repeats} {name}: {times[name][-1]:.3f} s", flush=True)
    return times


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements (of a time, or of a rate)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 6) for v in values]}


def fmt_spread(s: Mapping, digits: int = 3) -> str:
    """'12.3 [11.9, 12.8]' (median [min, max]); numbers of 1000 and more without exponent."""
    def f(v: float) -> str:
        return f"{v:.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"
    return f"{f(s['median'])} [{f(s['min'])}, {f(s['max'])}]"


def write_bench(name: str, markdown: str, payload: Mapping, device: torch.device, args: Mapping,
                out_root: Path = BENCH_DIR, load: tuple | None = None) -> Path:
    """Write ``<out_root>/<machine>/<name>.md`` and ``.json`` with provenance, then refresh the summary."""
    folder = Path(out_root) / machine_id(device)
    prov = provenance(device=device, args=dict(args), machine=machine_facts(device),
                      load_average_before_after=list(load) if load else None)
    head = (f"Machine `{machine_id(device)}`: {prov['device']}, CPU flags {', '.join(prov['machine']['cpu_flags'])}; "
            f"torch {prov['versions']['torch']}, commit {prov['git_commit']}, {prov['time']}; "
            f"1-min load average before/after: {load[0] if load else '?'} / {load[1] if load else '?'}.\n\n")
    io.write_text(head + markdown, folder / f"{name}.md")
    io.write_json({"provenance": prov, **payload}, folder / f"{name}.json")
    render_summary(out_root)
    return folder / f"{name}.md"


# Kinds of op for :func:`where_time_goes`: (label, substrings of the aten op name), first match wins.
INFERENCE_OPS = (("convolution", ("conv",)), ("batch norm", ("batch_norm",)), ("ReLU", ("relu", "clamp", "threshold")),
                 ("classifier", ("addmm", "mm", "einsum", "linear")), ("residual add", ("add",)),
                 ("copies / layout", ("copy", "contiguous", "clone", "reorder")))
TRAINING_OPS = (("conv backward", ("convolution_backward",)), ("conv forward", ("conv",)),
                ("BN backward", ("batch_norm_backward",)), ("BN forward", ("batch_norm",)),
                ("ReLU fwd+bwd", ("relu", "clamp", "threshold")), ("residual add / grad sums", ("add",)),
                ("zero-fill / copies", ("fill", "zero", "copy", "contiguous", "clone")),
                ("classifier", ("addmm", "mm", "linear")))


def where_time_goes(fn: Callable[[], object], kinds=INFERENCE_OPS) -> dict[str, float]:
    """Share of self CPU time by kind of op over one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    shares: dict[str, float] = {}
    for e in events:
        kind = next((label for label, keys in kinds if any(k in e.key for k in keys)), "other")
        shares[kind] = shares.get(kind, 0.0) + e.self_cpu_time_total / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def summary_tables(out_root: Path = BENCH_DIR, link_prefix: str = "") -> str:
    """Each bench's headline figures for every machine measured, side by side (one table per bench)."""
    out_root = Path(out_root)
    sections: dict[str, list[str]] = {}
    for path in sorted(out_root.glob("*/*.json")):
        data = json.loads(path.read_text())
        if not data.get("headline"):
            continue
        prov = data["provenance"]
        machine = prov.get("machine", {}).get("machine", path.parent.name)
        sections.setdefault(path.stem, []).extend(
            f"| `{machine}` | {key} | {value} | {prov['time'][:10]} | "
            f"[{path.stem}.md]({link_prefix}{path.parent.name}/{path.stem}.md) |"
            for key, value in data["headline"].items())
    lines = []
    for bench, rows in sections.items():
        lines += [f"**{bench}**", "", "| machine | figure | median [min, max] | measured | file |",
                  "|---|---|---|---|---|", *rows, ""]
    return "\n".join(lines) or "No benchmark measured yet (`make bench`)."


def render_summary(out_root: Path = BENCH_DIR) -> Path:
    """results/bench/README.md: :func:`summary_tables` under a header."""
    head = ("# Benchmarks, every machine measured\n\n"
            "Generated by `bagnet.bench.render_summary` from `results/bench/<machine>/*.json` (`make bench`, "
            "`make bench-gpu` write them). A figure holds for the machine named beside it: compare ratios measured "
            "in one run on one machine, not absolute numbers across machines. Medians [min, max] over interleaved "
            "rounds.\n\n")
    return io.write_text(head + summary_tables(out_root), Path(out_root) / "README.md")


def saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def make_steps(name: str, size: int, dtype, batch: int, device: torch.device, width: int | None,
               channels_last: bool = True, compile_model: bool = False):
    """(train_step, infer_step, memory_bytes) of one configuration, after one untimed training step.

    A step: autocast forward, cross-entropy, backward, SGD (momentum 0.9); inference under inference_mode.
    Memory: CUDA peak allocated; on CPU the bytes autograd saves for backward (activation memory)."""
    kw = {"width": width} if (width and name.startswith("bagnet")) else {}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, num_classes=1000, **kw).to(device).to(memory_format=fmt)
    run = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def train_step():
        model.train()
        with autocast():
            loss = F.cross_entropy(run(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        model.eval()
        with torch.inference_mode(), autocast():
            run(x)

    train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        mem = torch.cuda.max_memory_allocated(device)
    else:
        mem = saved_bytes(train_step)
    return train_step, infer_step, mem
