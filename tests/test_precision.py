"""task=precision on models whose answer is known: one whose two logits differ by less than bf16 resolves (bf16
autocast makes them a tie and flips every prediction), one with a wide margin (nothing changes)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from experiments.precision import run


class TwoLogits(nn.Module):
    """logits = w * mean(image) (a Linear, so autocast runs it in bf16)."""

    def __init__(self, w0: float, w1: float):
        super().__init__()
        self.fc = nn.Linear(1, 2, bias=False)
        self.fc.weight.data = torch.tensor([[w0], [w1]])

    def forward(self, x):
        return self.fc(x.mean((1, 2, 3))[:, None])


def test_bf16_flips_exactly_the_predictions_it_must():
    data = TensorDataset(torch.ones(8, 3, 8, 8), torch.ones(8, dtype=torch.long))    # every label: class 1
    models = {"close": TwoLogits(1.0, 1.001), "wide": TwoLogits(1.0, 2.0)}   # 1.001 rounds to 1.0 in bf16
    result = run(models, data, {"modes": ["fp32", "bf16", "fp16"], "device": "cpu", "progress": False})
    t = result.tables["precision"].set_index(["model", "mode"])
    assert t.loc[("close", "fp32"), "top1"] == 1.0 and t.loc[("close", "bf16"), "top1"] == 0.0
    assert t.loc[("close", "bf16"), "pred_changed"] == 8
    assert t.loc[("close", "bf16"), "top1_minus_fp32"] == -1.0 and t.loc[("close", "bf16"), "top1_minus_fp32_hi"] < 0
    assert t.loc[("wide", "bf16"), "pred_changed"] == 0 and t.loc[("wide", "bf16"), "top1"] == 1.0
    assert t.loc[("wide", "fp32"), "max_logit_dev"] == 0.0
    assert ("close", "fp16") not in t.index and "close fp16 (needs CUDA)" in result.raw["skipped"]


def test_a_bagnets_heatmap_deviation_is_measured():
    from bagnet import create_model
    model = create_model("bagnet9", width=4, num_classes=3).eval()
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    t = run({"B": model}, data, {"modes": ["fp32", "bf16"], "device": "cpu", "progress": False,
                                 "heatmap_images": 2}).tables["precision"].set_index("mode")
    assert t.loc["fp32", "max_heatmap_dev_rel"] == 0.0
    assert 0 < t.loc["bf16", "max_heatmap_dev_rel"] < 0.1 and 0 < t.loc["bf16", "max_logit_dev_rel"] < 0.1
