"""scripts/scan_output_offset.py: where its offsets read a stride-4 output, worked out on a ramp."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _scripts import load_script


@pytest.fixture(scope="module")
def scan():
    return load_script("scan_output_offset")


@pytest.mark.parametrize("offset", [0.0, -1.5, -6.0, 2.0])
def test_an_offset_reads_each_pixel_at_a_quarter_of_its_shifted_position(scan, offset):
    # Channel 0 holds the grid column index, channel 1 the row index: bilinear sampling of a ramp
    # is exact, so output pixel (x, y) must hold ((x + offset) / 4, (y + offset) / 4) wherever
    # that position lies on the grid (the edge value repeats beyond it).
    h, w = 6, 9
    ramp = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")[::-1]).float()[None]
    out = scan.read_at_offset(ramp, (4 * h, 4 * w), offset)
    xs = ((torch.arange(4 * w) + offset) / 4).clamp(0, w - 1)
    ys = ((torch.arange(4 * h) + offset) / 4).clamp(0, h - 1)
    assert torch.allclose(out[0, 0], xs.expand(4 * h, -1), atol=1e-5)
    assert torch.allclose(out[0, 1], ys[:, None].expand(-1, 4 * w), atol=1e-5)


def test_the_models_own_upsampling_is_offset_minus_one_and_a_half(scan):
    logits = torch.randn(1, 3, 6, 9)
    ours = scan.read_at_offset(logits, (24, 36), -1.5)
    theirs = F.interpolate(logits, size=(24, 36), mode="bilinear", align_corners=False)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(scan.read_at_offset(logits, (24, 36), 0.0), theirs, atol=1e-2)


def test_the_scan_at_minus_one_and_a_half_scores_as_refinenet_eval_does(scan, tmp_path, monkeypatch):
    """On photos whose sides are multiples of 4 the model's own upsampling is offset -1.5, so the
    scan's figure there is the evaluation's, and another offset gives another figure."""
    import json

    from _datagen import make_folder

    from refinenet.config import RefineNetConfig
    from refinenet.data import EvalTransform, build_dataset
    from refinenet.evaluate import evaluate_model
    from refinenet.folder import save_pretrained
    from refinenet.models import build_model

    torch.manual_seed(0)
    config = RefineNetConfig(backbone="mobilenetv2", num_classes=3, widths=[16] * 4, dropout=0.0)
    model = build_model(config).eval()
    with torch.no_grad():  # a decoder that starts at zero draws one class everywhere, at any offset
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    save_pretrained(model, tmp_path / "model")
    make_folder(tmp_path / "data" / "val" / "images", tmp_path / "data" / "val" / "labels", ["a", "b"], size=(64, 48))
    (tmp_path / "data" / "val" / "boxes.json").write_text(json.dumps({"a": [[1, 30, 0, 64, 48]], "b": []}))
    dataset = build_dataset("folders", tmp_path / "data", "val", EvalTransform(config.mean, config.std))
    expected = evaluate_model(model, dataset, 3, 255, progress=False)["mIoU"]
    out = tmp_path / "scan.json"
    argv = ["scan", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--offsets=-1.5,-9"]
    monkeypatch.setattr("sys.argv", [*argv, "--boxes", "--out", str(out)])
    assert scan.main() == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["offset"] for r in rows] == [-1.5, -9.0]
    assert rows[0]["mIoU"] == pytest.approx(expected, abs=1e-6)
    assert rows[1]["mIoU"] != pytest.approx(expected, abs=1e-3)
    assert 0 <= rows[0]["found"] <= 100 and 0 <= rows[0]["outside"] <= 100
