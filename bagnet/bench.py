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

from . import io
from .provenance import REPO_ROOT, cpu_name, provenance

BENCH_DIR = REPO_ROOT / "results" / "bench"
# The CPU features that decide which kernels torch runs (fp32 AVX-512 vs AVX2; bf16 native or emulated).
KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in KEY_FLAGS if f in have]
    except OSError:
        pass
    return []


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


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: bool = True, progress: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds of one call each, in turn."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
            if progress:
                print(f"  repeat {r + 1}/{repeats} {name}: {times[name][-1]:.3f} s", flush=True)
    return times


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements (of a time, or of a rate)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 6) for v in values]}


def fmt_spread(s: Mapping, digits: int = 3) -> str:
    """'12.3 [11.9, 12.8]' (median [min, max])."""
    g = f".{digits}g"
    return f"{s['median']:{g}} [{s['min']:{g}}, {s['max']:{g}}]"


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


def render_summary(out_root: Path = BENCH_DIR) -> Path:
    """results/bench/README.md: each bench's headline rows for every machine measured, side by side."""
    out_root = Path(out_root)
    sections: dict[str, list[str]] = {}
    for path in sorted(out_root.glob("*/*.json")):
        data = json.loads(path.read_text())
        headline = data.get("headline")
        if not headline:
            continue
        prov = data["provenance"]
        machine = prov.get("machine", {}).get("machine", path.parent.name)
        rows = sections.setdefault(path.stem, [])
        for key, value in headline.items():
            rows.append(f"| `{machine}` | {key} | {value} | {prov['time'][:10]} | "
                        f"[{path.stem}.md]({path.parent.name}/{path.stem}.md) |")
    lines = ["# Benchmarks, every machine measured", "",
             "Generated by `bagnet.bench.render_summary` from `results/bench/<machine>/*.json` (`make bench` "
             "writes them). A figure holds for the machine named beside it: compare ratios measured in one run "
             "on one machine, not absolute numbers across machines. Medians [min, max] over interleaved repeats.",
             ""]
    for bench, rows in sections.items():
        lines += [f"## {bench}", "", "| machine | figure | value | measured | file |", "|---|---|---|---|---|",
                  *rows, ""]
    return io.write_text("\n".join(lines), out_root / "README.md")
