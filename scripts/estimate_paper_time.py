"""Estimate how long ``make reproduce-paper`` takes, from CPU timings measured here.

    python scripts/estimate_paper_time.py [experiment=paper | experiment=paper_full] [--threads 1]

1. Counts the work of each experiment of the composed config in forward-equivalents (one forward pass of one
   224 px image through one model; a backward pass counted as 2 forwards), from the protocol parameters.
2. Measures seconds per forward-equivalent of every model on this CPU (random weights, 224 px, fp32),
   and of one L-BFGS evaluation of the texture synthesis (VGG-19 to pool4, forward + backward).
3. CPU estimate = work x measured time. GPU estimate = CPU estimate x (CPU GFLOP/s measured on
   ResNet-50, 4.1 GMAC per image) / ASSUMED_GPU_FLOPS, plus JPEG decoding of the accuracy passes at
   ASSUMED_DECODE images/s. The GPU numbers rest on the two ASSUMED_ constants: an estimate, not a
   measurement.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ASSUMED_GPU_FLOPS = 15e12      # H100, fp32 with TF32 off: ~60 TFLOP/s peak on CUDA cores, assume ~25% in use
ASSUMED_DECODE = 1500          # images/s: JPEG decode + resize with 8 loader workers
LBFGS_EVALS_PER_STEP = 1.25    # strong-Wolfe line search: evaluations per L-BFGS iteration (typical)


def seconds_per_image(model, size=224, batch=2, reps=2) -> float:
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(reps):
            model(x)
    return (time.perf_counter() - t) / (reps * batch)


def work(cfg) -> dict[str, dict[str, float]]:
    """experiment -> {model label: forward-equivalents}; '__vgg19_evals' for texture synthesis."""
    from experiments.sensitivity import region_for
    models, sig = cfg.models, cfg.experiments
    labels = list(models)
    cnns = [m for m in labels if not str(models[m].name).startswith("bagnet")]
    n_val = 50000
    out = {"accuracy": {m: float(n_val) for m in labels}}
    t = sig.texture
    out["texture"] = {m: 3.0 * t.num_images for m in labels}
    out["texture"]["__vgg19_evals"] = float(t.num_images * t.steps * LBFGS_EVALS_PER_STEP)
    i = sig.additivity
    per_image = sum(1 + 3 * i.pairs_per_bin * (len(i.distance_bins) - 1) for _ in i.patch_sizes)
    out["additivity"] = {m: float(i.num_images * per_image) for m in labels}
    s = sig.sensitivity
    regions = (224 // (s.region or region_for(int(models[s.bagnet].patch_size)))) ** 2
    methods = list(s.methods)
    grad = {"saliency": 3, "input_x_gradient": 3, "integrated_gradients": 3 * s.ig_steps, "deeplift": 6, "lrp": 3,
            "occlusion": regions, "bagnet": 0, "random": 0}
    per_target = 2 + sum(grad.get(m, 3) for m in methods) + len(methods) * s.max_regions
    out["sensitivity"] = {m: float(s.num_images * per_target) for m in (s.targets or cnns)}
    out["sensitivity"]["__bagnet_heatmaps"] = float(s.num_images * len(s.targets or cnns))
    c = sig.patches
    out["patches"] = {s.bagnet: float(len(c.classes) * c.per_class_images + c.distractor_images)}
    out["patches"]["__bagnet_heatmaps"] = float(sig.heatmaps.num_images)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*", default=["experiment=paper"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from bagnet.config import compose
    from bagnet.heatmaps import heatmap
    from bagnet.models import create_model
    from experiments.texture_synthesis import GramExtractor
    cfg = compose(args.overrides)
    w = work(cfg)
    sec = {}
    release = lambda spec: {k: v for k, v in dict(spec).items() if k != "pretrained"}   # random weights: timing only
    for label, spec in cfg.models.items():
        sec[label] = seconds_per_image(create_model(**release(spec)).eval())
        print(f"  {label}: {sec[label]:.3f} s / image (CPU, {args.threads} thread)", flush=True)
    vgg = create_model("vgg19").features
    ext = GramExtractor(vgg)
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    sum(g.sum() for g in ext(x).values()).backward()
    t = time.perf_counter()
    for _ in range(2):
        sum(g.sum() for g in ext(x).values()).backward()
    sec["__vgg19_evals"] = (time.perf_counter() - t) / 2
    bag = create_model(**release(cfg.models[cfg.experiments.sensitivity.bagnet])).eval()
    t = time.perf_counter()
    with torch.no_grad():
        heatmap(bag, torch.randn(1, 3, 224, 224), target=0, stride=cfg.experiments.sensitivity.heatmap_stride)
    sec["__bagnet_heatmaps"] = time.perf_counter() - t
    print(f"  texture L-BFGS evaluation: {sec['__vgg19_evals']:.2f} s; BagNet heatmap: "
          f"{sec['__bagnet_heatmaps']:.1f} s", flush=True)
    cpu_flops = 2 * 4.1e9 / sec["ResNet-50"] if "ResNet-50" in sec else 50e9
    total_cpu = total_gpu = 0.0
    print("\n| experiment | CPU hours (measured rates x work) | GPU minutes (estimate) |\n|---|---|---|")
    for experiment, items in w.items():
        cpu = sum(n * sec[k] for k, n in items.items())
        gpu = cpu * cpu_flops / ASSUMED_GPU_FLOPS
        if experiment == "accuracy":
            gpu += sum(items.values()) / ASSUMED_DECODE
        total_cpu += cpu
        total_gpu += gpu
        print(f"| {experiment} | {cpu / 3600:.1f} | {gpu / 60:.1f} |")
    print(f"| total | {total_cpu / 3600:.1f} | {total_gpu / 60:.0f} |")
    print(f"\nCPU: {cpu_flops / 1e9:.0f} GFLOP/s measured on ResNet-50; GPU assumed {ASSUMED_GPU_FLOPS / 1e12:.0f} "
          f"TFLOP/s effective fp32 (TF32 off) and {ASSUMED_DECODE} decoded images/s: the GPU column is an estimate.")


if __name__ == "__main__":
    main()
