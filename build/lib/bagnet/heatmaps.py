"""Patch-logit heatmaps of a BagNet, computed densely ("a trous") instead of patch by patch.

Definition (the authors' ``bagnets.utils.generate_heatmap_pytorch``): zero-pad the normalised image by
p = (q-1)//2 on every side, evaluate the BagNet on every q x q patch of the padded image, keep the
logit. Map entry (a, b) is the patch whose top-left corner is (a, b) in the padded image, i.e. whose
centre is pixel (a, b) of the image, so an H x W image gives an H x W map.

Why the dense rewrite is exact: every conv is unpadded and top-left aligned (a strided conv's output i
reads inputs s*i.., the residual crop drops bottom/right), BN in eval mode and ReLU act per pixel.
So "layer L at dense position t" := "layer L at index 0 for the input cropped at t" is well defined,
and the strided net's index i is dense position jump_L * i. A conv that the strided net runs with
stride s on a grid of jump d becomes, densely, a stride-1 conv with dilation d; the net's strides only
say which dense positions it happens to compute. We compute exactly the dense positions the wanted
output needs: walking back from output step s, a k>1 conv of dilation d needs its input at step
gcd(step, d), a 1x1 conv at the same step. Tensors are stored at their step g (entry j = dense
position g*j), so a conv runs as F.conv2d(stride=g_out/g_in, dilation=d/g_in) with the model's own
weights. Stride 8 reproduces the plain forward pass; stride 1 is the fully dilated net.

Relation to the model's own outputs (p = (q-1)//2, n_h = (H-q)//8 + 1, n_w = (W-q)//8 + 1):
  * heatmap(x, stride=8) == model.patch_logits(F.pad(x, [p]*4))                (all classes)
  * model.patch_logits(x)[..., i, j] == heatmap(x, stride=1)[..., p + 8i, p + 8j]
  * model(x) == mean over i < n_h, j < n_w of heatmap(x, stride=1)[..., p + 8i, p + 8j]
    (only patches lying wholly inside the image: no padding involved). When 8 | p (q = 17, 33) these
    are the entries heatmap(x, stride=8)[..., p/8 + i, p/8 + j]; for q = 9 (p = 4) use stride 4 and
    entries [1 + 2i, 1 + 2j].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import unwrap

__all__ = ["heatmap", "heatmap_patchwise", "pad_for_heatmap"]


def _check(model: nn.Module, stride: int) -> nn.Module:
    net = unwrap(model)
    if net.training:
        # Train-mode BN normalises with batch statistics, which differ between a patch and a dense map.
        raise ValueError("heatmaps need BN running statistics: call model.eval() first")
    if not 1 <= int(stride) <= 8:
        raise ValueError(f"stride must be in 1..8, got {stride}")
    return net


def pad_for_heatmap(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Zero-pad normalised images by (q-1)//2 per side (the authors' heatmap convention)."""
    p = (unwrap(model).patch_size - 1) // 2
    return F.pad(images, (p, p, p, p))


def _as_target(target, batch: int, device) -> torch.Tensor | None:
    if target is None:
        return None
    t = torch.as_tensor(target, device=device, dtype=torch.long)
    return t.expand(batch) if t.dim() == 0 else t


# ----------------------------------------------------------------------------------------------
# Reference: one forward pass per q x q patch.
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def heatmap_patchwise(model: nn.Module, images: torch.Tensor, target=None, stride: int = 1,
                      batch_size: int = 256, rows: int | None = None) -> torch.Tensor:
    """Reference heatmap: crop every q x q patch (stride ``stride``) of the padded image and run the model.

    Returns [B, H_s, W_s] for a target (int or LongTensor[B]) or [B, K, H_s, W_s] for target None,
    H_s = ceil(H / stride). Batches hold max(1, batch_size // W_s) whole map rows. ``rows`` limits the
    computation to the first ``rows`` map rows (benchmarks).
    """
    net = _check(model, stride)
    q = net.patch_size
    dtype = next(net.parameters()).dtype
    device = next(net.parameters()).device
    x = pad_for_heatmap(net, images.to(device=device, dtype=dtype))
    b = x.shape[0]
    tgt = _as_target(target, b, device)
    # A view [B, H_s, W_s, 3, q, q]; only one batch of whole map rows is copied out at a time
    # (all 224x224 patches of one image would be 656 MB in float32).
    win = x.unfold(2, q, stride).unfold(3, q, stride).permute(0, 2, 3, 1, 4, 5)
    hs, ws = win.shape[1], win.shape[2]
    hs = hs if rows is None else min(hs, rows)
    step = max(1, batch_size // ws)
    out = []
    for i in range(b):
        chunks = [net(win[i, r: min(r + step, hs)].reshape(-1, 3, q, q)) for r in range(0, hs, step)]
        logits = torch.cat(chunks).t().reshape(-1, hs, ws)                     # [K, H_s, W_s]
        out.append(logits if tgt is None else logits.index_select(0, tgt[i:i + 1])[0])
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Dense computation.
# ----------------------------------------------------------------------------------------------

def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, pre: nn.Conv2d | None = None):
    """Eval-mode BN is a per-channel affine map, so it folds into the preceding conv: saves a full
    pass over every activation (BN was ~15% of the dense run time on CPU). ``pre``: a bias-free 1x1
    conv run before ``conv``, composed into it. Folded in float64 and rounded once, so the folded
    kernel is the exact product to float32's rounding (no error added to the patch-wise one)."""
    w = conv.weight.double()
    if pre is not None:
        w = torch.einsum("omyx,mc->ocyx", w, pre.weight[:, :, 0, 0].double())
    b = None if conv.bias is None else conv.bias.double()
    if bn is not None:
        scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        b = shift if b is None else shift + b * scale
        w = w * scale[:, None, None, None]
    dtype = conv.weight.dtype
    return w.to(dtype).contiguous(), None if b is None else b.to(dtype)


@dataclass
class _Conv:
    """How to run one conv (+ its BN) densely: on input stored at step g_in, output at step g_out."""
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    dilation: int     # dense dilation = jump of the strided net's input grid at this conv
    g_in: int = 1
    g_out: int = 1
    pre: nn.Conv2d | None = None   # a 1x1 stride-1 conv without bias applied before this one, composed into it

    def affine(self, mu_in: torch.Tensor | None):
        """Kernel and bias that map the input stored as ``x - mu_in`` to the true (BN-ed) output, the bias
        in float64: ``conv(x, w, b) == conv(x - mu, w, b + sum(w * mu))`` for valid convs."""
        w, b = _fold_bn(self.conv, self.bn, self.pre)      # (the stem's pre: as BagNet.stem_conv)
        if mu_in is not None:
            b = torch.einsum("oc...,c->o", w.double(), mu_in) + (0 if b is None else b.double())
        return w, b

    def run(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, every: int = 1) -> torch.Tensor:
        """The dense conv; ``every`` > 1 computes only every such output row and column (the same values)."""
        k = self.conv.kernel_size[0]
        assert self.conv.padding == (0, 0) and self.conv.kernel_size[0] == self.conv.kernel_size[1]
        dil = self.dilation // self.g_in if k > 1 else 1
        b = None if b is None else b.to(w.dtype)
        return F.conv2d(x, w, b, stride=every * (self.g_out // self.g_in), dilation=dil)


_SAMPLE = 8    # the centring offsets are means over every 8th row and column: 1/64 of a conv's work


def _channel_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean((0, 2, 3), dtype=torch.float64)


def _relu_centred(c: _Conv, x: torch.Tensor, mu_x: torch.Tensor | None):
    """relu(c(x)) stored as ``y - mu_y``, mu_y ~ its channel means (from every 8th row and column).

    Why centre: a conv's float32 error grows with its running sums, and ReLU outputs (the residual stream
    most: its mean grows block by block) have a mean near their spread, so the sums drift far from their
    result. Centred inputs keep them small: on a 2-core EPYC's NHWC kernels this took the dense map's
    float32 error from ~1.5x to well below the patch-wise routine's (results/bench/<machine>/heatmap.md).
    The offset costs no pass over the data: it is folded into the biases, and relu(y) - mu is
    max(y - mu, -mu), one clamp in place of the ReLU."""
    w, b = c.affine(mu_x)
    mu_y = _channel_mean(c.run(x, w, b, every=_SAMPLE).relu_())
    y = c.run(x, w, (0 if b is None else b) - mu_y)
    return y.clamp_(min=(-mu_y).to(y.dtype)[None, :, None, None]), mu_y


def _plan(net: nn.Module, stride: int):
    """Per-conv dense dilation (forward walk) and storage steps (backward walk from the output step)."""
    # The stem's 1x1 conv (3 -> width) and 3x3 conv have no nonlinearity between them: one 3x3 conv from
    # 3 channels, as in BagNet.stem_conv (at stride 1 a small saving: the later stages dominate).
    assert net.conv1.kernel_size == (1, 1) and net.conv1.stride == (1, 1) and net.conv1.bias is None
    stem = _Conv(net.conv2, net.bn1, 1, pre=net.conv1)
    blocks, jump = [], stem.conv.stride[0]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for blk in layer:
            c2 = _Conv(blk.conv2, blk.bn2, jump)
            jump *= blk.conv2.stride[0]
            ds = None
            if blk.downsample is not None:
                conv, bn = blk.downsample
                assert conv.kernel_size == (1, 1) and conv.stride == blk.conv2.stride, \
                    "expected a 1x1 downsample with conv2's stride"
                ds = _Conv(conv, bn, 1)
            blocks.append((_Conv(blk.conv1, blk.bn1, 1), c2, _Conv(blk.conv3, blk.bn3, 1), ds))
    # Backward: the step needed at each tensor. A k>1 conv of dilation d reads positions t + d*m, so
    # from outputs at multiples of g it needs inputs at multiples of gcd(g, d).
    g = stride
    for c1, c2, c3, ds in reversed(blocks):
        c3.g_in = c3.g_out = c2.g_out = g
        if ds is not None:
            ds.g_out = g
        g = math.gcd(g, c2.dilation) if c2.conv.kernel_size[0] > 1 else g
        c2.g_in = c1.g_in = c1.g_out = g
        if ds is not None:
            ds.g_in = g
    stem.g_out = g
    stem.g_in = math.gcd(g, stem.dilation) if stem.conv.kernel_size[0] > 1 else g
    return stem, blocks


def _dense_features(x: torch.Tensor, stem, blocks):
    """Dense features, stored centred: returns (f - mu, mu) with mu per channel (see _relu_centred)."""
    x, mu_x = _relu_centred(stem, x, None)
    for c1, c2, c3, ds in blocks:
        a, mu_a = _relu_centred(c1, x, mu_x)
        h, mu_h = _relu_centred(c2, a, mu_a)
        w3, b3 = c3.affine(mu_h)
        t = c3.g_out // c1.g_in                  # the block's input -> output step ratio
        if ds is not None:
            wd, bd = ds.affine(mu_x)
            residual = lambda every=1: ds.run(x, wd, bd, every)
        else:                                    # the stored x; its offset goes into c3's bias
            residual = lambda every=1: x[..., ::t * every, ::t * every]
            b3 = b3 + mu_x
        # The block output relu(out + residual), centred by its estimated channel means mu_o.
        out_s = c3.run(h, w3, b3, every=_SAMPLE)
        out_s.add_(residual(_SAMPLE)[..., : out_s.shape[-2], : out_s.shape[-1]])
        mu_o = _channel_mean(out_s.relu_())
        out = c3.run(h, w3, b3 - mu_o)
        # Same top-left alignment as the release's crop: both paths start at dense position 0.
        out.add_(residual()[..., : out.shape[-2], : out.shape[-1]])
        x, mu_x = out.clamp_(min=(-mu_o).to(out.dtype)[None, :, None, None]), mu_o
    return x, mu_x


def _elems_per_output_pixel(net: nn.Module, stem, blocks, stride: int) -> int:
    """Largest live-tensor size per output pixel (channels x (stride/step)^2), for chunk sizing."""
    worst = 0
    for c in [stem] + [c for cs in blocks for c in cs if c is not None]:
        for ch, g in ((c.conv.in_channels, c.g_in), (c.conv.out_channels, c.g_out)):
            worst = max(worst, ch * (stride // g) ** 2)
    return worst


EVIDENCE = ("logit", "relative")


def classifier(net: nn.Module, evidence: str = "logit") -> tuple[torch.Tensor, torch.Tensor]:
    """The final layer as (weight [K, C], bias [K]) for ``evidence``.

    A patch's class logits are identifiable only up to a constant per patch: adding the same number to all of
    one patch's logits changes no prediction (the image's softmax is over the mean of the patch logits), yet
    it moves every raw logit of that patch. "relative" evidence removes that constant, the patch's mean logit
    over the K classes: z_c - mean_k z_k = (w_c - mean_k w_k) . f + (b_c - mean_k b_k), the same linear layer
    with centred rows, so heatmaps and patch scans stay exact."""
    if evidence == "logit":
        return net.fc.weight, net.fc.bias
    if evidence == "relative":
        w, b = net.fc.weight, net.fc.bias
        return w - w.mean(0, keepdim=True), b - b.mean()
    raise ValueError(f"unknown evidence '{evidence}'; valid: {', '.join(EVIDENCE)}")


@torch.no_grad()
def heatmap(model: nn.Module, images: torch.Tensor, target=None, stride: int = 1,
            chunk_rows: int | None = None, max_elems: int = 1 << 27,
            channels_last: bool | None = None, evidence: str = "logit") -> torch.Tensor:
    """Dense patch-logit heatmap, numerically the same as :func:`heatmap_patchwise`.

    Args:
        model: a BagNet in eval mode (BN running statistics; raises otherwise). Its dtype and
            device are used; images are converted to them.
        images: normalised images [B, 3, H, W], any H, W.
        target: int or LongTensor[B] -> returns [B, H_s, W_s]; None -> all classes [B, K, H_s, W_s].
        stride: 1..8; entry (i, j) is the patch centred at pixel (stride*i, stride*j),
            H_s = ceil(H / stride). Only those positions (and what they depend on) are computed.
        chunk_rows: output rows per pass (the map is computed in row bands of the padded image,
            exact because the dense net is translation-equivariant and band starts are multiples of
            the stride); None sizes bands so that no tensor exceeds ``max_elems`` elements.
        channels_last: None (auto) runs NHWC except for nets narrower than 16 channels on CPU; True/False
            force a layout (both exact; NHWC is faster on CPU and GPU).
        evidence: "logit" (the patch's class logit, as the authors' routine) or "relative" (the logit minus
            the patch's mean logit over all classes, :func:`relative_classifier`).

    Every conv's input is stored centred by its channel means (offsets folded into the biases: same
    values, no extra pass; see _relu_centred), which keeps float32 sums small: the float32 map is more
    exact than the patch-wise routine's (error columns of results/bench/<machine>/heatmap.md).
    """
    net = _check(model, stride)
    q = net.patch_size
    p0 = next(net.parameters())
    x = pad_for_heatmap(net, images.to(device=p0.device, dtype=p0.dtype))
    b, _, hp, wp = x.shape
    hs, ws = math.ceil((hp - q + 1) / stride), math.ceil((wp - q + 1) / stride)
    tgt = _as_target(target, b, x.device)
    stem, blocks = _plan(net, stride)
    if chunk_rows is None:
        per_row = b * ws * _elems_per_output_pixel(net, stem, blocks, stride)
        chunk_rows = max(1, max_elems // max(per_row, 1))
    weight, bias_all = classifier(net, evidence)
    # Only the target row of the classifier is needed for a single class.
    w = weight if tgt is None else weight[tgt]                                 # [K, C] or [B, C]
    bias = bias_all if tgt is None else bias_all[tgt]
    bands = []
    for r0 in range(0, hs, chunk_rows):
        r1 = min(hs, r0 + chunk_rows)
        band = x[:, :, stride * r0: stride * (r1 - 1) + q]
        # NHWC lets oneDNN/cuDNN skip layout reorders around every conv (~1.5-2x on CPU here);
        # not for nets narrower than 16 channels, where torch 2.14.1's CPU NHWC kernels segfaulted.
        if channels_last if channels_last is not None else (stem.conv.out_channels >= 16 or band.is_cuda):
            band = band.contiguous(memory_format=torch.channels_last)
        f, mu = _dense_features(band, stem, blocks)                       # [B, C, r1-r0, W_s], stored f - mu
        shift = (torch.einsum("...c,c->...", w.double(), mu) + bias.double()).to(f.dtype)   # [K] or [B]
        if tgt is None:
            bands.append(torch.einsum("bchw,kc->bkhw", f, w) + shift[None, :, None, None])
        else:   # one classifier row per image
            bands.append(torch.einsum("bchw,bc->bhw", f, w) + shift[:, None, None])
    return torch.cat(bands, dim=-2)
