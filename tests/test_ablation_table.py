"""scripts/ablation_table.py: the README's ablation table from released variant folders, with a
hand-made evaluation file and benchmark result standing in for the real measurements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _scripts import load_script

from refinenet.config import RefineNetConfig
from refinenet.data import CAMVID_CLASSES
from refinenet.folder import save_pretrained
from refinenet.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CAMVID = list(CAMVID_CLASSES)

pytestmark = pytest.mark.usefixtures("single_thread", "no_network")


@pytest.fixture(scope="module")
def table():
    return load_script("ablation_table")


def variant_folder(tmp_path: Path, name: str, cascade: str, crp_stages: int, miou: float) -> tuple[Path, int, int]:
    """A small random variant saved as a release would be, its eval file hand-made; returns the
    folder, its parameter count and that of its decoder (all but the backbone), counted here."""
    config = RefineNetConfig(
        backbone="mobilenetv2",
        num_classes=11,
        widths=[16] * {"4-cascade": 4, "2-cascade": 2, "1-cascade": 1}[cascade],
        cascade=cascade,
        crp_stages=crp_stages,
        class_names=CAMVID,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = build_model(config)
    folder = tmp_path / name
    save_pretrained(model, folder)
    per_class = {c: 10.0 + i for i, c in enumerate(CAMVID)}
    evaluation = {"mIoU": miou, "per_class_iou": per_class, "scales": [1.0], "flip": False}
    (folder / "eval-test.json").write_text(json.dumps(evaluation))
    total = sum(p.numel() for p in model.parameters())
    return folder, total, total - sum(p.numel() for p in model.backbone.parameters())


def test_rows_take_each_figure_from_its_measurement(table, tmp_path):
    four, four_params, four_decoder = variant_folder(tmp_path, "abl-4cascade", "4-cascade", 4, 61.25)
    one, one_params, one_decoder = variant_folder(tmp_path, "abl-1cascade", "1-cascade", 0, 57.5)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "abl-4cascade.yaml").write_text(
        "name: abl-4cascade\nmodel: {num_classes: 11}\ndata: {kind: camvid}\nseed: 7\n"
    )
    bench = {
        "stamp": {"command": "python benchmarks/bench.py --models zoo:abl-4cascade --name ablation"},
        "models": [
            {"model": "zoo:abl-4cascade", "sizes": [{"size": "480x360", "batch1": {"fast": {"median_s": 0.0421}}}]},
            {"model": "lw-mobilenetv2", "sizes": [{"size": "480x360", "batch1": {"fast": {"median_s": 0.5}}}]},
        ],
    }
    latencies = table.bench_latencies(bench)
    assert latencies == {"abl-4cascade": pytest.approx(42.1)}  # architecture-only rows are not variants

    rows = [table.measure(f.name, f, latencies, configs) for f in (four, one)]
    assert [r.parameters for r in rows] == [four_params, one_params]
    assert four_params != one_params
    assert [r.decoder_parameters for r in rows] == [four_decoder, one_decoder] and one_decoder < four_decoder
    assert rows[0].seed == 7 and rows[1].seed is None  # no config, no seed claimed
    assert rows[0].thin_iou == {"Pole": 12.0, "SignSymbol": 16.0, "Fence": 17.0, "Pedestrian": 19.0, "Bicyclist": 20.0}
    assert "no CRP (0 stages)" in rows[1].description and "1-cascade" in rows[1].description

    lines = table.markdown(rows, bench["stamp"]["command"]).splitlines()
    first, second = lines[2].split(" | "), lines[3].split(" | ")
    assert first[1:8] == ["7", "61.25", "12.0", "16.0", "17.0", "19.0", "20.0"]
    assert first[-1] == "42 |"
    assert first[8] == f"{four_params / 1e6:.2f} M ({four_decoder / 1e6:.2f} M)"
    assert second[1:3] == ["-", "57.50"] and second[-1] == "- |"  # unmeasured latency is a dash
    assert "`python benchmarks/bench.py --models zoo:abl-4cascade --name ablation`" in lines[-1]


def test_a_multiscale_evaluation_is_refused(table, tmp_path):
    folder, _, _ = variant_folder(tmp_path, "abl", "2-cascade", 4, 60.0)
    evaluation = json.loads((folder / "eval-test.json").read_text())
    (folder / "eval-test.json").write_text(json.dumps(evaluation | {"scales": [0.75, 1.0, 1.25], "flip": True}))
    with pytest.raises(ValueError, match="not a single-scale"):
        table.measure("abl", folder, {}, tmp_path)


def test_the_readme_table_is_the_scripts_output_for_the_bundled_family(table, torchvision_cache):
    """The published table is what the script writes from the committed folders, configs and
    benchmark result, character for character (parameter and multiply-add counts do not depend on
    the backbone's values, so the ``torchvision_cache`` fixture's random stand-in serves)."""
    from refinenet import zoo

    bench = json.loads((ROOT / "benchmarks" / "results" / "ablation.json").read_text(encoding="utf-8"))
    latencies = table.bench_latencies(bench)
    members = zoo.family_members(zoo.ABLATION_FAMILY)
    assert {m.model_id for m in members} <= set(latencies), "every variant was timed"
    rows = [table.measure(m.model_id, zoo.bundled_folder(m.model_id), latencies, ROOT / "configs") for m in members]
    assert [round(r.test_miou, 2) for r in rows] == [m.metrics["test_mean_iou"] for m in members]  # folder, zoo agree
    assert table.markdown(rows, bench["stamp"]["command"]) in (ROOT / "README.md").read_text(encoding="utf-8")
