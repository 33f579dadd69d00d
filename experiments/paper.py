"""make reproduce-paper: the ImageNet experiments of Brendel & Bethge (ICLR 2019) in one resumable run.

With the authors' BagNet weights and torchvision's ImageNet weights, on the ILSVRC2012 validation set
(preprocessing = torchvision's eval transform: resize 256, centre crop 224, ImageNet mean/std — the
``imagenet`` data config at image_size 224), it writes ``results/paper/``:

  accuracy/       top-1/top-5 of every model beside the published numbers (Sec. 3 / abstract)
  texture/        accuracy on Gatys et al. (2015) texturised images (VGG-19 Gram matrices) and on
                  4x4 tile-scrambled images, same images for every model (Sec. 4)
  interactions/   joint effect of masking two image parts vs the sum of the single effects, vs their
                  distance, per model and mask size (Sec. 4, ``experiments.additivity``)
  errors/         class-conditional top-5 accuracy, BagNet-33 vs each CNN (scatter, Pearson r), plus
                  kappa / shared-error rates (Sec. 4, ``experiments.error_overlap``)
  sensitivity/    target-logit drop vs number of occluded regions ranked by the BagNet-33 heatmap, by
                  captum attributions of the target itself, and at random (Sec. 4, ``experiments.sensitivity``
                  with epsilon-LRP, :mod:`experiments.lrp`, as one more method)
  patches/        BagNet-33 heatmaps and most predictive patches for a fixed list of classes (Sec. 3)

Numerics: TF32 is switched off for the whole run (``torch.backends.cuda.matmul.allow_tf32 = False``,
``torch.backends.cudnn.allow_tf32 = False``, float32 matmul precision "highest") and restored after;
every model carries a forward pre-hook that refuses to run with TF32 on and counts its forwards
(``raw['numerics']``). Occluders (interactions, sensitivity) and heatmap padding are 0 in normalised
space, i.e. the ImageNet mean colour.

Resuming: every (part, model) unit is saved under ``run_dir`` (``runs/paper/<data>/<run_name>/``) through
:mod:`bagnet.io` as soon as it is done — human-readable tables/JSON plus ``unit.pt`` (the unit's Result
and the key it was computed with). A re-run reuses each unit whose key (its part's config, the model
spec and weights, the data, the seed) is unchanged and computes only the rest; texturised images are
saved in chunks. ``raw['resume']`` lists what was computed and what was reused.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from bagnet import io
from bagnet.config import as_dict
from bagnet.engine import Precision, Tf32Guard, accuracy_from_predictions, numerics_state, predict, tf32
from bagnet.errors import ConfigError
from bagnet.models import is_bagnet
from bagnet.result import Result

from . import explain, sensitivity
from . import paper_setup as setup
from .inputs import eval_indices, forward, load_batch, topk_correct
from .keys import check_keys, typed_cfg
from .paper_report import (
    accuracy_figure,
    headline_table,
    loss_figure,
    readme,
    texture_figure,
)
from .paper_setup import (
    PARTS,
    PUBLISHED_ACCURACY,
    PUBLISHED_TEXTURE,
    Models,
    PaperConfig,
)
from .scrambling import examples_figure, scramble_batch
from .suite import SplitData, Store, digest as _digest, run_experiment
from .texture_synthesis import TextureConfig
from .registry import register_pipeline


# ---------------------------------------------------------------- the parts
class Paper:
    def __init__(self, ctx, cfg: dict, store: Store, guard: Tf32Guard):
        self.ctx, self.cfg, self.store, self.guard = ctx, cfg, store, guard
        data = ctx.data
        self.data = data
        self.dataset = data.split(ctx.cfg.split)
        self.classes = list(data.classes)
        self.mean, self.std = tuple(data.mean), tuple(data.std)
        self.device = ctx.device
        self.seed = int(ctx.cfg.seed)
        self.weights_dir = ctx.cfg.get("weights_dir")
        self.models = Models(cfg["models"], self.weights_dir, self.device, data, guard)
        self.labels = list(cfg["models"])
        self.bagnet = cfg["bagnet"]
        if self.bagnet not in self.labels:
            raise ConfigError(f"paper.bagnet={self.bagnet} is not among paper.models ({self.labels})")
        d = as_dict(ctx.cfg.data)
        self.data_key = {k: d.get(k) for k in ("name", "root", "image_size", "label_space", "val_from_train")}
        self.data_key.update(split=ctx.cfg.split, n=len(self.dataset), seed=self.seed)

    def key(self, part: str, model: str | None = None, **extra) -> dict:
        return {"part": part, "cfg": self.cfg[part], "data": self.data_key,
                "model": self.models.key(model) if model else None, **extra}

    @property
    def cnns(self) -> list[str]:
        """The models that are not BagNets (by their architecture, :func:`bagnet.models.is_bagnet`)."""
        return [m for m in self.labels if not is_bagnet(self.models[m])]

    def suite_key(self) -> dict:
        """What a suite unit of this run depends on besides its config: the data and the models' weights."""
        return {"data": self.data_key, "model_keys": {m: self.models.key(m) for m in self.labels}}

    def sig_cfg(self, part: str, **extra) -> dict:
        return {**self.cfg[part], "seed": self.seed, "device": str(self.device), "progress": self.cfg["progress"],
                **extra}

    # -- 1. accuracy
    def accuracy(self) -> tuple[Result, dict[str, pd.DataFrame]]:
        c = self.cfg["accuracy"]
        indices = eval_indices(len(self.dataset), c["num_images"], self.seed)
        preds, rows = {}, []
        for m in tqdm(self.labels, desc="accuracy", disable=not self.cfg["progress"], leave=False):
            def compute(m=m):
                workers = int(self.ctx.cfg.data.get("workers", 0) or 0)
                loader = DataLoader(Subset(self.dataset, indices), batch_size=c["batch_size"], shuffle=False,
                                    num_workers=workers, pin_memory=self.device.type == "cuda")
                df = predict(self.models[m], loader, Precision(None), self.device, progress=self.cfg["progress"],
                             desc=f"accuracy {m}")
                df["index"] = [indices[i] for i in df["index"]]
                return Result(tables={"predictions": df}, raw={"metrics": accuracy_from_predictions(df)})
            r = self.store.unit("accuracy", m, self.key("accuracy", m), compute)
            preds[m] = r.tables["predictions"]
            met = r.raw["metrics"]
            pub = PUBLISHED_ACCURACY.get(m, (None, None, ""))
            rows.append({"model": m, "top1": met["top1"], "top5": met["top5"], "n": met["n"],
                         "published top1": pub[0], "published top5": pub[1], "source": pub[2]})
        table = pd.DataFrame(rows)
        return Result(tables={"accuracy": table}, figures={"accuracy": accuracy_figure(table)},
                      raw={"n_images": len(indices)},
                      header="Top-1/top-5 on the ImageNet validation images; published: BagNets from Brendel & "
                             "Bethge (2019), CNNs from torchvision's weight documentation (source column)."), preds

    # -- 2. texturised images
    def textures(self) -> dict:
        c = self.cfg["texture"]
        indices = eval_indices(len(self.dataset), c["num_images"], self.seed)
        tc = TextureConfig(layers=tuple(c["layers"]), steps=c["steps"], lr=c["lr"], history_size=c["history_size"],
                           seed=self.seed)
        key = {"cfg": {k: c[k] for k in ("num_images", "steps", "layers", "history_size", "lr", "chunk")},
               "data": self.data_key, "model": self._texture_model_key()}
        folder = self.store.root / "texture_images" / _digest(key)
        extractor = None
        tex, hist, src, lab = [], [], [], []
        chunks = range(0, len(indices), c["chunk"])
        for start in tqdm(chunks, desc="texture synthesis", disable=not self.cfg["progress"], leave=False):
            idx = indices[start: start + c["chunk"]]
            images, labels = load_batch(self.dataset, idx)
            path = folder / f"chunk_{start:06d}.pt"
            saved = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
            if saved is None or saved["indices"] != idx:
                if extractor is None:
                    vgg = setup.load_model(self.cfg["texture_model"], self.weights_dir, self.data, "texture_model")
                    vgg.register_forward_pre_hook(self.guard)
                    extractor = tc.extractor(vgg.features.to(self.device))
                    extractor.features.register_forward_pre_hook(self.guard)
                started = time.perf_counter()
                t, h = replace(tc, seed=self.seed + start).synthesize(images.to(self.device), extractor,
                                                                      mean=self.mean, std=self.std)
                saved = {"indices": idx, "textures": t.detach().cpu(), "loss": h}
                io.save_checkpoint(saved, path)
                self.store.computed.append(f"texture_images/{start}")
                self.store.seconds[f"texture_images/{start}"] = time.perf_counter() - started
            else:
                self.store.reused.append(f"texture_images/{start}")
            tex.append(saved["textures"]); hist.append(saved["loss"]); src.append(images); lab.append(labels)
        cat = (lambda xs: torch.cat(xs)) if indices else (lambda xs: torch.empty(0))
        return {"indices": indices, "textures": cat(tex), "loss": cat(hist), "images": cat(src),
                "labels": cat(lab), "key": _digest(key)}

    def _texture_model_key(self) -> dict:
        return setup.release_key(self.cfg["texture_model"], self.weights_dir)

    def texture(self) -> Result:
        c = self.cfg["texture"]
        t = self.textures()
        g = c["scramble_grid"]
        rows = []
        for m in tqdm(self.labels, desc="texture eval", disable=not self.cfg["progress"], leave=False):
            def compute(m=m):
                model, out = self.models[m], []
                for cond, x in (("clean", t["images"]), ("texture (Gatys)", t["textures"]),
                                (f"tiles {g}x{g}", scramble_batch(t["images"], g, self.seed, t["indices"]))):
                    logits = forward(model, x, c.get("batch_size", 32)) if len(x) else torch.zeros(0, 1000)
                    out.append({"model": m, "condition": cond, "n": len(x),
                                "top1": float(topk_correct(logits, t["labels"], 1).float().mean()) if len(x) else float("nan"),
                                "top5": float(topk_correct(logits, t["labels"], 5).float().mean()) if len(x) else float("nan")})
                return Result(tables={"accuracy": pd.DataFrame(out)})
            rows.append(self.store.unit("texture", m, self.key("texture", m, textures=t["key"]), compute)
                        .tables["accuracy"])
        table = pd.concat(rows, ignore_index=True)
        clean = table[table.condition == "clean"].set_index("model")
        table["top5_rel"] = [r.top5 / clean.top5[r.model] if clean.top5[r.model] else float("nan")
                             for r in table.itertuples()]
        table["published top5"] = [PUBLISHED_TEXTURE.get(r.model, (None, None))[0 if r.condition == "clean" else 1]
                                   if r.condition in ("clean", "texture (Gatys)") else None for r in table.itertuples()]
        n_ex = min(c["num_examples"], len(t["indices"]))
        examples = {"original": t["images"][:n_ex], "texture (Gatys)": t["textures"][:n_ex],
                    f"tiles {g}x{g}": scramble_batch(t["images"][:n_ex], g, self.seed, t["indices"][:n_ex])}
        loss = t["loss"].numpy() if len(t["loss"]) else np.zeros((0, c["steps"] + 1))
        return Result(tables={"accuracy": table},
                      figures={"accuracy": texture_figure(table), "examples": examples_figure(examples, self.mean, self.std),
                               "synthesis_loss": loss_figure(loss)},
                      raw={"n_images": len(t["indices"]), "final_loss": loss[:, -1].tolist() if len(loss) else [],
                           "texture_model": self.cfg["texture_model"]},
                      header="Accuracy on the same images: clean, texturised with Gatys et al. (2015) neural texture "
                             "synthesis on VGG-19 (experiments/texture_synthesis.py), and cut into a g x g grid of "
                             "randomly permuted tiles. Published: VGG-16 top-5 clean -> texturised as quoted in the "
                             "project's issue, not verified against the paper text.")

    # -- 3. interactions of image parts
    def interactions(self) -> Result:
        r = run_experiment("additivity", self.models, self.dataset, self.sig_cfg("interactions"), store=self.store,
                           key=self.suite_key(), part="interactions")
        r.header = ("Masking two s x s parts A, B (occluder: 0 in normalised space = the mean colour): "
                    "interaction = Delta(A u B) - Delta(A) - Delta(B) of the true-class logit, per "
                    "edge-to-edge gap bin. BagNet-q: exactly 0 from a gap of q-1 px (column exact_zero_from).")
        return r

    # -- 4. error distribution
    def errors(self, preds: dict[str, pd.DataFrame]) -> Result:
        c = dict(self.cfg["errors"])
        if not c["pairs"]:
            c["pairs"] = [[self.bagnet, m] for m in self.cnns]
        r = run_experiment("error_overlap", self.models, SplitData(self.dataset, self.classes, self.mean, self.std), c,
                           predictions=preds)
        pairs = r.tables["pairs"]
        paper = pairs[(pairs.model_a == self.bagnet) | (pairs.model_b == self.bagnet)].copy()
        r.tables["bagnet_vs_cnns"] = paper[["model_a", "model_b", "n", "r_top5", "r_top1", "kappa", "both_wrong",
                                            "both_wrong_expected"]].reset_index(drop=True)
        r.header = ("Class-conditional accuracies over the classes present (the paper: top-5 over the 1000 classes, "
                    "BagNet-33 vs each CNN, Pearson r); kappa and shared-error rates per image are additions.")
        return r

    # -- 5. feature sensitivity
    def sensitivity(self) -> Result:
        c = self.cfg["sensitivity"]
        cfg = self.sig_cfg("sensitivity", targets=c["targets"] or self.cnns, bagnet=self.bagnet)
        r = run_experiment("sensitivity", self.models, self.dataset, cfg, store=self.store, key=self.suite_key())
        curves = r.tables["curves"]
        order = list(dict.fromkeys(["DenseNet-169", *cfg["targets"]]))        # the paper's headline target first
        r.tables["curves"] = curves.sort_values("target", key=lambda s: s.map({t: i for i, t in enumerate(order)}),
                                                kind="stable")
        r.figures = {"logit_drop_vs_n": sensitivity.curve_figure(r.tables["curves"])}
        r.header = (f"Drop of the target's true-class logit when the top-n {c['region']} x {c['region']} "
                    f"regions are set to 0 (normalised = mean colour), regions ranked by the {self.bagnet} "
                    "heatmap (computed without the target), by captum attributions of the target itself, "
                    "by single-region occlusion (greedy reference) and at random. lrp: epsilon-LRP where "
                    "captum supports the model (raw.json lrp_support says why not elsewhere).")
        return r

    # -- 6. heatmaps and most predictive patches
    def patches(self) -> Result:
        c = self.cfg["patches"]
        wnid_index = {w: i for i, w in enumerate(self.classes)}
        missing = [w for w in c["classes"] if w not in wnid_index]
        if missing:
            raise ConfigError(f"paper.patches.classes: {missing} are not classes of data={self.data_key['name']}")
        class_ids = [wnid_index[w] for w in c["classes"]]
        labels = [int(y) for _, y in self.dataset.samples]
        own = [i for cid in class_ids for i in [j for j, y in enumerate(labels) if y == cid][: c["per_class_images"]]]
        others = [i for i in eval_indices(len(labels), None, self.seed) if labels[i] not in class_ids]
        others = [others[int(j)] for j in torch.randperm(len(others), generator=torch.Generator().manual_seed(self.seed))
                  [: c["distractor_images"]]]
        subset = Subset(self.dataset, sorted(own + others))

        def compute():
            bag = {self.bagnet: self.models[self.bagnet]}
            heat = explain.heatmaps_result(bag, Subset(self.dataset, own), self.classes, self.mean, self.std,
                                           num_images=c["heatmap_images"], seed=self.seed, device=self.device,
                                           stride=c["heatmap_stride"], evidence=c["evidence"])
            pat = explain.patches_result(bag, subset, self.classes, self.mean, self.std, k=c["k"],
                                         per_class_images=None, device=self.device, class_ids=class_ids,
                                         max_per_image=c["max_per_image"], evidence=c["evidence"])
            return Result(tables={**heat.tables, **pat.tables}, figures={**heat.figures, **pat.figures},
                          raw={"heatmap_padding": "zero in normalised space (mean colour), (q-1)/2 px per side",
                               "classes": c["classes"], "n_images": len(subset)})
        return self.store.unit("patches", self.bagnet, self.key("patches", self.bagnet), compute)


# ---------------------------------------------------------------- the task
@register_pipeline("paper")
def task(ctx) -> Result:
    """The ``paper`` task (make reproduce-paper): every part of ``paper.parts`` (see module doc)."""
    cfg = typed_cfg(PaperConfig, as_dict(ctx.cfg).get("paper", {}), "paper")
    if not cfg["models"]:
        raise ConfigError("paper.models is empty; use experiment=paper")
    if ctx.data.num_classes != 1000:
        raise ConfigError(f"the paper's models are 1000-way; data={ctx.cfg.data.name} has {ctx.data.num_classes} "
                          "classes (use data.label_space=imagenet1k)")
    check_keys(PaperConfig, cfg, "paper", int(ctx.data.image_size))    # the bounds on the image side, now known
    store = Store(Path(ctx.cfg.run_dir), cfg["progress"])
    guard = Tf32Guard()
    started = time.perf_counter()
    with tf32(False):
        inside = numerics_state()
        paper = Paper(ctx, cfg, store, guard)
        parts, preds, timings = {}, None, {}
        wanted = cfg["parts"]
        for part in tqdm([p for p in PARTS if p in wanted or (p == "accuracy" and "errors" in wanted)],
                         desc="paper", disable=not cfg["progress"]):
            t0 = time.perf_counter()
            if part == "accuracy":
                result, preds = paper.accuracy()
                if "accuracy" not in wanted:
                    continue
            elif part == "errors":
                result = paper.errors(preds)
            else:
                result = getattr(paper, part)()
            parts[part] = result
            timings[part] = time.perf_counter() - t0
    numerics = {**inside, "restored_after": numerics_state(), "guarded_forwards": guard.forwards,
                "forwards_with_tf32_on": 0}
    summary_table = headline_table(parts, cfg)
    raw = {"numerics": numerics, "resume": {"computed": store.computed, "reused": store.reused},
           "unit_seconds": store.seconds, "part_seconds": timings, "wall_s": time.perf_counter() - started,
           "run_dir": str(store.root), "models": {m: paper.models.key(m) for m in paper.labels},
           "preprocessing": "resize int(S*256/224), centre crop S, ImageNet mean/std (bagnet.data.transforms."
                            f"eval_transform), S = {ctx.cfg.data.image_size}",
           "occluder": "0 in normalised space (the ImageNet mean colour); heatmap padding likewise"}
    return Result(tables={"summary": summary_table}, parts=parts, raw=raw,
                  readme=lambda prov: readme(prov, parts, summary_table, raw, ctx.cfg),
                  summary=f"paper: {', '.join(parts)}; computed {len(store.computed)} units, "
                          f"reused {len(store.reused)}")
