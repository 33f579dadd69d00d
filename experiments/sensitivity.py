"""Signature 4: BagNet heatmaps predict where a standard CNN is sensitive.

Reproduces the paper's spatial-sensitivity test (Brendel & Bethge 2019, Sec. 4, "Spatial sensitivity",
Fig. 8): image regions ranked by a BagNet-33 heatmap, when masked, lower DenseNet-169's true-class
logit more than regions ranked by attribution methods computed on DenseNet-169 itself. So the CNN is
sensitive to the same local features that a bag-of-local-features model uses.

Protocol, for every target model T (``targets``, default every non-BagNet model) and image x of class y:
  * regions: the non-overlapping k x k grid, k = ``region``; None (the default) = :func:`region_for` the
    heatmap BagNet's q: 8 px up to q = 17, 16 px at q = 33. A region's BagNet score sums the patches
    *centred* in it, while masking it changes every patch that overlaps it; with regions much smaller
    than q the two disagree and even the BagNet's own heatmap cannot find its evidence (measured on the
    hand-built BagNet-33 of experiments/controls.py on 112 px images: 8 px regions with border regions
    included reach 0.72 of occlusion's AUC on the BagNet itself; the default geometry 0.97;
    tests/test_instruments.py holds every q to 0.8). Remainder rows/columns when k
    does not divide H or W belong to no region and are never masked; nor are, for any method, regions
    all of whose pixels lie within (q - 1) / 2 px of the border: the heatmap scores them from patches
    that reach into its zero padding, patches the BagNet itself never sees (``raw['regions']``).
  * a method gives a map [H, W]; a region's score is the sum of the map inside it; regions are masked
    in descending score order (ties by region index):
      - bagnet: the dense heatmap of the BagNet ``bagnet`` (default: the first BagNet among the models)
        for class y, ``bagnet.heatmaps.heatmap`` with stride ``heatmap_stride`` (1 = exact; s > 1 fills
        each s x s cell with the patch centred at its top-left pixel). Needs no access to T.
      - saliency (captum's |gradient|, summed over channels), input_x_gradient,
        integrated_gradients (zero baseline, ``ig_steps`` steps), deeplift (zero baseline): captum
        attributions of T for class y, summed over channels (signed, except saliency).
      - occlusion: captum Occlusion of T with the region as sliding window and stride (zero baseline) —
        each region's exact single-region logit drop: the greedy upper reference.
      - random: a random order, seeded per (seed, image index): the lower reference.
    Gradient methods run on ``attribution_copy(T)``, a copy with one fresh non-inplace nn.ReLU per ReLU
    call (captum's DeepLift needs that); outputs are checked to match T's. Known captum limitation: when
    one tensor feeds a ReLU and, through other ops, a second ReLU, DeepLift's attributions are
    incomplete (large convergence delta). Standard ResNets/DenseNets/BagNets have no such pattern;
    ``raw['deeplift_mean_abs_delta']`` reports the delta so a violation is visible.
  * masking: the top-n regions are set to 0 in normalised space (the mean colour), n = 1..N
    (N = ``max_regions``, default 10), accumulating. drop(n) = f_T(x)[y] - f_T(x masked)[y].
Metrics per method and target: mean drop at n in ``report_n`` and ``auc`` = mean of the mean drop over
n = 1..N (area under the curve / N); ``auc_vs_occlusion`` = auc / auc of occlusion.
Deviations: the paper masks with DenseNet-169 on ImageNet at 224 px; we use whatever models and
images are given. The paper's set of attribution methods differs in detail (it includes e.g.
epsilon-LRP); we use captum's Saliency, InputXGradient, IntegratedGradients, DeepLift and Occlusion, and
epsilon-LRP (``lrp``, experiments/lrp.py) for targets captum's LRP covers (``raw['lrp_support']`` says why not).

Returns Result with
  tables: ``logit_drop`` — target, method, n_images, drop_<n> for n in report_n, auc, auc_vs_occlusion;
          ``curves`` — target, method, n, mean_drop, sem
  figures: ``logit_drop_vs_n`` (one panel per target)
  raw: mean |convergence delta| of DeepLift and IntegratedGradients per target, max |output difference|
       of attribution_copy, the curves
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from bagnet.errors import ConfigError
from bagnet.heatmaps import heatmap
from bagnet.models import is_bagnet
from bagnet.result import Result
from bagnet.seeding import generator, seed_everything
from bagnet.stats import bootstrap_ci, paired_bootstrap_ci
from bagnet.utils import jsonable, unwrap
from bagnet.verdicts import reading

from .registry import Experiment, Unit, register
from .lrp import lrp_maps, lrp_support
from .inputs import eval_indices, forward, iter_batches, mean_colour, occluder_fill, OCCLUDERS, prepare_model, resolve_data
from .keys import ExperimentConfig, IMAGE, ranged, typed_cfg

METHODS = ["bagnet", "saliency", "input_x_gradient", "integrated_gradients", "deeplift", "occlusion", "random"]
OPTIONAL_METHODS = ["lrp"]   # epsilon-LRP (experiments/lrp.py): only for models captum's LRP covers


@dataclass
class Config(ExperimentConfig):
    targets: Optional[list[str]] = None   # model names; None = every non-BagNet model (every model if all are BagNets)
    bagnet: Optional[str] = None          # model name of the heatmap BagNet; None = the first BagNet given
    methods: list[str] = ranged(list(METHODS), choices=METHODS + OPTIONAL_METHODS, nonempty=True)
    # px; None = region_for(q of the heatmap BagNet) (8 without a BagNet)
    region: Optional[int] = ranged(None, ge=1, le=IMAGE)
    max_regions: int = ranged(10, ge=1)
    report_n: list[int] = ranged([1, 5, 10], ge=1)
    ig_steps: int = ranged(32, ge=1)
    internal_batch_size: int = ranged(64, ge=1)
    heatmap_stride: int = ranged(1, ge=1, le=IMAGE)
    num_images: Optional[int] = ranged(32, ge=1)
    batch_size: int = ranged(16, ge=1)
    # zero (the paper) | gray | dataset_mean | blur: see inputs.occluder_fill
    occluder: str = ranged("zero", choices=OCCLUDERS)
    blur_sigma: float = ranged(4.0, gt=0)
    bagnet_control: bool = True           # also score the heatmap BagNet as its own target (a control)

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}


def attribution_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (an fx.GraphModule) in which every ReLU call — nn.ReLU modules used
    several times (ResNet/BagNet ``self.relu``), ``F.relu`` (DenseNet.forward) and ``x.relu()`` — is a
    separate, non-inplace nn.ReLU module. captum's DeepLift hooks ReLU modules and refuses modules
    used more than once; in-place ReLUs break its hooks. Parameters are frozen (attribution only
    needs input gradients). Computes the same function as ``model``."""
    net = copy.deepcopy(unwrap(model)).eval()
    gm = fx.symbolic_trace(net)
    count = 0
    for node in list(gm.graph.nodes):
        relu = ((node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU))
                or (node.op == "call_function" and node.target in _RELU_FUNCS)
                or (node.op == "call_method" and node.target in ("relu", "relu_")))
        if not relu:
            continue
        name = f"attribution_relu{count}"
        count += 1
        gm.add_submodule(name, nn.ReLU(inplace=False))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm.eval()


def region_scores(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of maps [B, H, W] over the non-overlapping k x k regions: [B, H // k, W // k]."""
    b, h, w = maps.shape
    m = maps[:, : h // k * k, : w // k * k]
    return m.reshape(b, h // k, k, w // k, k).sum((2, 4))


def rank_regions(maps: torch.Tensor, k: int, last: torch.Tensor | None = None) -> torch.Tensor:
    """Region indices (row-major over the region grid) by descending score: LongTensor [B, R]; regions
    marked in ``last`` (bool [R]) come after every other, in their own score order."""
    s = region_scores(maps.double(), k).flatten(1)
    order = torch.sort(-s, dim=1, stable=True).indices
    if last is None:
        return order
    # a stable sort on "marked" keeps the score order within the unmarked and within the marked regions
    return torch.gather(order, 1, torch.sort(last[order].long(), dim=1, stable=True).indices)


def masked_images(images: torch.Tensor, order: torch.Tensor, k: int, n_max: int,
                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N, C, H, W]: image b with its first n + 1 regions of ``order`` replaced by ``fill``
    ([B, C, H, W]; None = 0, the normalisation mean colour), n = 0..N-1."""
    b, c, h, w = images.shape
    gh, gw = h // k, w // k
    n_max = min(n_max, gh * gw)
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))          # [B, R]
    masked = rank_of[:, None, :] < torch.arange(1, n_max + 1)[None, :, None]             # [B, N, R]
    mask = masked.view(b, n_max, gh, gw).repeat_interleave(k, 2).repeat_interleave(k, 3)
    mask = F.pad(mask, (0, w - gw * k, 0, h - gh * k))[:, :, None]                        # remainder unmasked
    fill = torch.zeros_like(images) if fill is None else fill
    return torch.where(mask, fill[:, None], images[:, None])


def region_for(q: int | None) -> int:
    """The default region side for a BagNet-q: the multiple of 8 nearest q / 2 (at least 8), so a region
    holds the centres of the patches that masking it mostly removes."""
    return 8 if q is None else 8 * max(1, round(q / 16))


def padded_region_mask(h: int, w: int, k: int, q: int) -> torch.Tensor:
    """Bool [R]: regions all of whose pixels are scored by a heatmap patch that reaches into the zero
    padding (within (q-1)//2 px of the border): their BagNet score rests on padded patches only."""
    p = (q - 1) // 2
    ys, xs = torch.arange(h // k * k), torch.arange(w // k * k)
    pad_y, pad_x = (ys < p) | (ys > h - 1 - p), (xs < p) | (xs > w - 1 - p)
    padded = pad_y[:, None] | pad_x[None, :]
    return padded.view(h // k, k, w // k, k).permute(0, 2, 1, 3).reshape(-1, k * k).all(1)


def attribution_maps(method: str, target: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: Mapping,
                     bagnet: nn.Module | None = None, indices=None, stats: dict | None = None,
                     fill: torch.Tensor | None = None, original: nn.Module | None = None) -> torch.Tensor:
    """Map [B, H, W] of ``method`` (see module doc); ``target`` is an :func:`attribution_copy` of
    ``original``; ``fill`` is the occluder (occlusion's baseline; None = 0)."""
    from captum.attr import DeepLift, InputXGradient, IntegratedGradients, Occlusion, Saliency

    b, c, h, w = images.shape
    k = cfg["region"]
    # captum warns on every call that it sets hooks / that inputs did not require grad: expected here.
    warnings.filterwarnings("ignore", message=".*(hooks|did not already require gradients).*", category=UserWarning)
    p = next(target.parameters())
    x = images.to(p.device, p.dtype)
    y = labels.to(p.device)
    if method == "bagnet":
        s = int(cfg["heatmap_stride"])
        hm = heatmap(bagnet, images, target=labels, stride=s).cpu()
        return hm.repeat_interleave(s, 1).repeat_interleave(s, 2)[:, :h, :w]
    if method == "random":
        return _random_maps(h, w, k, cfg["seed"], indices)
    if method == "saliency":
        a = Saliency(target).attribute(x, target=y, abs=True)
    elif method == "input_x_gradient":
        a = InputXGradient(target).attribute(x, target=y)
    elif method == "integrated_gradients":
        a, delta = IntegratedGradients(target).attribute(
            x, baselines=0.0, target=y, n_steps=cfg["ig_steps"], internal_batch_size=cfg["internal_batch_size"],
            return_convergence_delta=True)
        _record(stats, "ig_delta", delta)
    elif method == "deeplift":
        a, delta = DeepLift(target).attribute(x, baselines=0.0, target=y, return_convergence_delta=True)
        _record(stats, "deeplift_delta", delta)
    elif method == "occlusion":
        baseline = 0.0 if fill is None else fill.to(p.device, p.dtype)
        a = Occlusion(target).attribute(x, sliding_window_shapes=(c, k, k), strides=(c, k, k), baselines=baseline,
                                        target=y, perturbations_per_eval=cfg["batch_size"])
    elif method == "lrp":
        return lrp_maps(original, images, labels)
    else:
        raise ConfigError(f"unknown method '{method}'; known: {METHODS + OPTIONAL_METHODS}")
    return a.detach().sum(1).cpu()


def _random_maps(h: int, w: int, k: int, seed: int, indices) -> torch.Tensor:
    maps = torch.zeros(len(indices), h, w)
    for j, i in enumerate(indices):
        r = torch.rand(h // k, w // k, generator=generator(seed, 3, i))
        maps[j, : h // k * k, : w // k * k] = r.repeat_interleave(k, 0).repeat_interleave(k, 1)
    return maps


def _record(stats, key, delta):
    if stats is not None:
        stats.setdefault(key, []).extend(delta.detach().abs().double().cpu().flatten().tolist())


def run(models: dict[str, nn.Module], dataset, cfg: Mapping | None = None, classes=None, mean=None,
        std=None) -> Result:
    """Logit drop of each target when masking regions ranked by each method (see module doc).

    Keys and defaults: :class:`Config`.
    """
    cfg = typed_cfg(Config, cfg, "experiments.sensitivity")
    seed_everything(cfg["seed"])
    dataset, classes, mean, std = resolve_data(dataset, classes, mean, std)
    models = {k: prepare_model(m, cfg["device"], cfg["dtype"]) for k, m in models.items()}
    bag_name = cfg["bagnet"] or next((n for n, m in models.items() if is_bagnet(m)), None)
    methods = [m for m in cfg["methods"] if not m.startswith("bagnet") or bag_name is not None]
    targets = list(cfg["targets"] or ([n for n, m in models.items() if not is_bagnet(m)] or list(models)))
    if cfg["bagnet_control"] and bag_name and bag_name not in targets:
        targets.append(bag_name)            # the control: a BagNet scored by its own heatmap
    for name in targets + ([bag_name] if bag_name else []):
        if name not in models:
            raise ConfigError(f"model '{name}' not given; models: {list(models)}")
    indices = eval_indices(len(dataset), cfg["num_images"], cfg["seed"])
    q = unwrap(models[bag_name]).patch_size if bag_name else None
    k = cfg["region"] = cfg["region"] if cfg["region"] is not None else region_for(q)
    n_max = cfg["max_regions"]
    colour = mean_colour(dataset, indices) if cfg["occluder"] == "dataset_mean" else None
    excluded = None                                  # bool [R], from the first batch's image size

    drops = {(t, m): [] for t in targets for m in methods}        # lists of [B, N] arrays
    raw = {"attribution_copy_max_abs_diff": {}, "deeplift_mean_abs_delta": {}, "ig_mean_abs_delta": {},
           **({"lrp_support": {}} if "lrp" in methods else {})}
    for t in targets:
        model = models[t]
        attr_model = attribution_copy(model)
        if "lrp" in methods:     # captum's LRP has no rule for skip connections: those targets say why instead
            raw["lrp_support"][t] = lrp_support(model) or "computed"
        stats: dict = {}
        for idx, images, labels in iter_batches(dataset, indices, cfg["batch_size"], cfg["progress"],
                                                f"sensitivity {t}"):
            logits = forward(model, images, cfg["batch_size"])
            check = forward(attr_model, images, cfg["batch_size"])
            raw["attribution_copy_max_abs_diff"][t] = max(raw["attribution_copy_max_abs_diff"].get(t, 0.0),
                                                          float((check - logits).abs().max()))
            f0 = logits.gather(1, labels[:, None]).double()                             # [B, 1]
            if excluded is None:     # regions whose BagNet score rests on padded patches only: never masked
                excluded = padded_region_mask(*images.shape[-2:], k, q) if q else torch.zeros(
                    (images.shape[-2] // k) * (images.shape[-1] // k), dtype=torch.bool)
                if excluded.all():   # images too small for an interior: every region is a candidate
                    excluded = torch.zeros_like(excluded)
                n_max = min(n_max, int((~excluded).sum()))
            fill = (None if cfg["occluder"] == "zero" else
                    occluder_fill(images, cfg["occluder"], mean, std, cfg["blur_sigma"], colour))
            for method in methods:
                if method == "lrp" and raw["lrp_support"][t] != "computed":
                    continue
                maps = attribution_maps(method, attr_model, images, labels, cfg, bagnet=models.get(bag_name),
                                        indices=idx, stats=stats, fill=fill, original=model)
                order = rank_regions(maps, k, last=excluded)
                x = masked_images(images, order, k, n_max, fill)                    # [B, N, C, H, W]
                out = forward(model, x.flatten(0, 1), cfg["batch_size"]).view(len(idx), x.shape[1], -1)
                f = out.gather(2, labels[:, None, None].expand(-1, x.shape[1], 1))[..., 0].double()
                drops[t, method].append((f0 - f).numpy())
        for key, name in (("deeplift_delta", "deeplift_mean_abs_delta"), ("ig_delta", "ig_mean_abs_delta")):
            if key in stats:
                raw[name][t] = float(np.mean(stats[key]))

    rows, curve_rows, comparisons = [], [], []
    drops = {key: parts for key, parts in drops.items() if parts}       # lrp: only the targets it supports
    per_image_auc = {key: np.concatenate(parts).mean(1) for key, parts in drops.items()}
    for (t, method), parts in drops.items():
        d = np.concatenate(parts)                                  # [n_images, N]
        mean_curve = d.mean(0)
        sem = d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.full(d.shape[1], np.nan)
        curve_rows += [{"target": t, "method": method, "n": n + 1, "mean_drop": float(mean_curve[n]),
                        "sem": float(sem[n])} for n in range(d.shape[1])]
        row = {"target": t, "method": method, "n_images": int(len(d))}
        row.update({f"drop_{n}": float(mean_curve[n - 1]) if n <= d.shape[1] else float("nan")
                    for n in cfg["report_n"]})
        auc = bootstrap_ci(per_image_auc[t, method], seed=cfg["seed"])
        row.update(auc=auc.estimate, auc_lo=auc.lo, auc_hi=auc.hi, control=t == bag_name)
        rows.append(row)
        for heat in ("bagnet",):                                     # paired: the same images and target
            if method == heat or (t, heat) not in per_image_auc:
                continue
            diff = paired_bootstrap_ci(per_image_auc[t, heat], per_image_auc[t, method], seed=cfg["seed"])
            comparisons.append({"target": t, "control": t == bag_name, "heatmap": heat, "method": method,
                                 "bagnet_minus_method_auc": diff.estimate, "lo": diff.lo, "hi": diff.hi,
                                 # the claim: the BagNet heatmap ranks regions better than ``method``
                                 "verdict": reading(*diff, expected="greater")})
    table = pd.DataFrame(rows)
    occl = table[table["method"] == "occlusion"].set_index("target")["auc"] if len(table) else pd.Series(dtype=float)
    table["auc_vs_occlusion"] = [r.auc / occl[r.target] if r.target in occl and occl[r.target] != 0 else float("nan")
                                 for r in table.itertuples()]
    curves = pd.DataFrame(curve_rows)
    raw.update({"n_images": len(indices), "bagnet": bag_name, "region": k, "targets": targets, "methods": methods,
                "occluder": cfg["occluder"], "curves": curves.to_dict(orient="records"),
                "regions": {"side_px": k, "candidates": int((~excluded).sum()) if excluded is not None else 0,
                            "excluded_padded_only": int(excluded.sum()) if excluded is not None else 0,
                            "masked_up_to": n_max}})
    summary = "sensitivity (auc of logit drop): " + " | ".join(
        f"{t}: " + ", ".join(f"{r.method} {r.auc:.3g}" for r in table[table.target == t].itertuples())
        for t in targets)
    return Result(tables={"logit_drop": table, "curves": curves, "comparisons": pd.DataFrame(comparisons)},
                  figures={"logit_drop_vs_n": curve_figure(curves)},
                  raw=jsonable(raw), summary=summary)



def units(models: Mapping[str, nn.Module], cfg: Mapping) -> list:
    """One unit per target, with the heatmap BagNet beside it (its rows do not depend on the other
    targets), then the BagNet scored by its own heatmap (the control)."""
    bag = cfg.get("bagnet") or next((n for n, m in models.items() if is_bagnet(m)), None)
    targets = list(cfg.get("targets") or ([n for n, m in models.items() if not is_bagnet(m)] or list(models)))
    if cfg.get("bagnet_control", True) and bag and bag not in targets:
        targets.append(bag)
    return [Unit(t, list(dict.fromkeys([t] + ([bag] if bag else []))),
                 {"targets": [t], "bagnet": bag, "bagnet_control": False}) for t in targets]


def curve_figure(curves: pd.DataFrame):
    targets = list(dict.fromkeys(curves["target"])) if len(curves) else []
    n = max(len(targets), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False, constrained_layout=True)
    styles = {"bagnet": dict(color="C3", lw=2.2), "occlusion": dict(color="k", ls="--"),
              "random": dict(color="0.5", ls=":")}
    for ax, t in zip(axes[0], targets):
        for i, (method, d) in enumerate(curves[curves["target"] == t].groupby("method", sort=False)):
            st = styles.get(method, dict(color=f"C{i % 3 if i < 3 else i + 1}"))
            ax.plot(d["n"], d["mean_drop"], marker="o", ms=3, label=method, **st)
            ax.fill_between(d["n"], d["mean_drop"] - d["sem"], d["mean_drop"] + d["sem"], alpha=0.15,
                            color=st["color"])
        ax.set_title(f"target: {t}")
        ax.set_xlabel("masked regions n")
    axes[0, 0].set_ylabel("true-class logit drop")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))   # beside the curves, not on them
    return fig


def figures_from_tables(tables: Mapping[str, pd.DataFrame]) -> dict:
    """The figures that the saved tables alone determine (for scripts/render_results.py)."""
    return {"logit_drop_vs_n": curve_figure(tables["curves"])} if "curves" in tables else {}


register(Experiment("sensitivity", Config, run, units=units, version=2,   # 2: regions from q, padded-only excluded
                    models_named=lambda c: list(c["targets"] or []) + [c["bagnet"]] * bool(c["bagnet"]),
                    figures=lambda tables, raw: figures_from_tables(tables),
                    summary="signature 4: logit drop when occluding the regions each method ranks first"))
