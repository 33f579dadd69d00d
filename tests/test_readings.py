"""README.md and the results READMEs carry no number their files don't hold (reports/readings.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.demo import rebuild_demo_readme
from bagnet.io import result_digest
from reports.readings import render_document, unsourced_numbers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
DOCS = [ROOT / "README.md", RESULTS / "README.md", RESULTS / "paper" / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_hold_only_numbers_from_the_files(doc):
    """Every render block equals what its result files give now (re-render with `make render-results`),
    and outside the blocks no measured-looking number is written by hand."""
    text = doc.read_text()
    assert render_document(text, RESULTS) == text, f"{doc.name}: a block differs from its files; make render-results"
    assert unsourced_numbers(text) == [], f"{doc.name}: numbers outside render blocks"


def test_demo_readme_is_rendered_from_its_files():
    assert (RESULTS / "demo" / "README.md").read_text() == rebuild_demo_readme(RESULTS / "demo")


def test_the_check_flags_hand_written_numbers_and_spares_sourced_ones():
    block = "<!-- render: timings -->\nstale 0.935\n<!-- /render -->\n"
    text = ("CNN pairs reach 0.935 here.\nIt took 131 min.\nBagNet-33 on a 4x4 grid, 56 px tiles, 1,200 images.\n"
            "torch 2.14.1 and Python 3.10; `lr 0.001` in code.\nThe paper's 87.6% top-5.\n" + block
            + "kept 72% of it.\n")
    assert [n for n, _ in unsourced_numbers(text)] == [1, 2, 9]
    rendered = render_document(text, RESULTS)
    assert "stale 0.935" not in rendered and "`demo/accuracy/`" in rendered    # the block is the files' now
    with pytest.raises(KeyError, match="unknown render block"):
        render_document("<!-- render: nonsense -->\n<!-- /render -->", RESULTS)


def test_claims_on_a_model_below_the_learned_floor_cannot_be_tested(tmp_path):
    """A model whose clean top-1 interval is above chance but reaches below the learned floor (3x chance and
    0.25) is not evidence for or against a claim: its rows say 'cannot test', naming it, its interval and the
    floor; rows about other models do not change."""
    import json
    import shutil

    from reports.files import SIGNATURES, TABLE1
    from reports.verdicts import block_verdicts, learned_floor

    assert learned_floor(1 / 15) == 0.25 and learned_floor(1 / 7) == pytest.approx(3 / 7)
    for folder in (SIGNATURES, TABLE1):
        shutil.copytree(RESULTS / folder, tmp_path / folder)
    row = lambda text, start: next(line for line in text.splitlines() if line.startswith(start))  # noqa: E731
    before = block_verdicts(tmp_path)
    assert "cannot test (below the learned floor" not in before

    raw = tmp_path / SIGNATURES / "scrambling" / "raw.json"
    blob = json.loads(raw.read_text())
    acc = blob["tables"]["accuracy"]                                # column -> list of values
    (i,) = [i for i in range(len(acc["model"])) if acc["model"][i] == "DenseNet-169" and acc["condition"][i] == "clean"]
    acc["top1"][i], acc["top1_lo"][i], acc["top1_hi"][i] = 0.20, 0.17, 0.23   # above chance (1/15), below the floor
    raw.write_text(json.dumps({**blob, "digest": result_digest(blob)}))   # as if computed so
    after = block_verdicts(tmp_path)
    said = "cannot test (below the learned floor: DenseNet-169 clean top-1 0.200 [0.170, 0.230] vs floor 0.250)"
    assert said not in row(before, "| DenseNet-169: image parts") and said in row(after, "| DenseNet-169: image parts")
    sens = [line for line in after.splitlines() if "predicts DenseNet-169's" in line]
    assert sens and all("cannot test (below the learned floor: DenseNet-169" in line for line in sens)
    errs = "| BagNet-33 errs on the same classes as DenseNet-169"
    assert "below the learned floor: DenseNet-169" in row(after, errs) and "cannot test" not in row(before, errs)
    other = "| BagNet-33 errs on the same classes as ResNet-50"
    assert row(after, other) == row(before, other)


def test_signature_models_block_lists_the_checkpoints_and_flags_a_folder_that_used_others(tmp_path):
    import json
    import shutil

    from reports.files import SIGNATURES
    from reports.readings import block_signature_models

    shutil.copytree(RESULTS / SIGNATURES, tmp_path / SIGNATURES)
    raws = sorted((tmp_path / SIGNATURES).glob("*/raw.json"))
    entry = {"sha256": "ab" * 32, "git_commit": "c0ffee" * 6, "device": "cpu: test", "epochs": 8, "precision": "bf16",
             "top1": {"val": {"top1": 0.4, "lo": 0.35, "hi": 0.45, "n": 300}}}
    for i, raw in enumerate(raws):
        blob = json.loads(raw.read_text())
        blob["provenance"]["models"] = {"VGG-16": {**entry, "sha256": ("cd" if i == 1 else "ab") * 32}}
        raw.write_text(json.dumps({**blob, "digest": result_digest(blob)}))
    text = block_signature_models(tmp_path)
    assert "| VGG-16 | 0.400 [0.350, 0.450] (n=300) | – | 8 | bf16 | cpu: test, commit `c0ffeec0ff` | `abababababab` |" in text
    assert f"**Other checkpoints in: {raws[1].parent.name}.**" in text


def test_every_published_number_has_its_source_and_torchvisions_match_its_weights():
    """experiments/published.yaml: each entry says where it was published and whether that was checked; the
    numbers marked as torchvision's are those its weights document (to the digits typed)."""
    import torchvision.models as tvm

    from experiments import published

    sections = {name: published.section(name) for name in ("imagenet", "texture", "runtime", "report_table1",
                                                           "precision", "patch_robustness")}
    for name, entries in sections.items():
        for key, e in entries.items():
            assert isinstance(e.verified, bool) and e.unit in published.UNITS, (name, key)
            assert e.source or not any(v is not None for v in e.numbers.values()), (name, key)
    weights = {"AlexNet": tvm.AlexNet_Weights, "VGG-16": tvm.VGG16_Weights, "ResNet-50": tvm.ResNet50_Weights,
               "ResNet-152": tvm.ResNet152_Weights, "DenseNet-169": tvm.DenseNet169_Weights}
    for model, w in weights.items():
        e = sections["imagenet"][model]
        meta = w.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]
        assert e.source == "torchvision" and e.verified
        for k, acc in (("top1", "acc@1"), ("top5", "acc@5")):
            digits = len(repr(e[k]).split(".")[1])
            assert e[k] == round(meta[acc] / 100, digits), (model, k)


def test_a_hand_edited_result_reaches_no_document(tmp_path):
    """A raw.json changed after the suite wrote it (a number edited by hand) no longer matches its digest: the
    documents' number blocks and scripts/render_results.py refuse it in one line naming the file, before any
    file is rewritten."""
    import json
    import shutil
    import subprocess
    import sys

    from bagnet.errors import UserError
    from reports.files import TABLE1
    from reports.readings import block_timings

    shutil.copytree(RESULTS / TABLE1, tmp_path / TABLE1)
    assert "table1/cpu-scratch" in block_timings(tmp_path)
    raw = tmp_path / TABLE1 / "raw.json"
    blob = json.loads(raw.read_text())
    blob["tables"]["table1"]["test"][0] = 0.99
    raw.write_text(json.dumps(blob))
    md = tmp_path / TABLE1 / "table1.md"
    before = md.read_bytes()
    with pytest.raises(UserError, match="digest mismatch"):
        block_timings(tmp_path)
    run = subprocess.run([sys.executable, "scripts/render_results.py", str(tmp_path)], capture_output=True, text=True,
                         cwd=RESULTS.parent)
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1].startswith(f"error: {raw}")
    assert md.read_bytes() == before
    raw.unlink()                                  # a results folder's raw.json lost: named, not a missing row
    with pytest.raises(UserError, match="missing"):
        block_timings(tmp_path)
