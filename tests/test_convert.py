"""Converters: every published checkpoint layout, every container style, total key maps.

Synthetic checkpoints are built from the key/shape lists in ``data/checkpoint_layouts`` (random
values), converted, loaded strictly, and every converted tensor is compared with its source
under a key mapping written here from the spec's table (independent of the converter's regexes).
The three largest layouts (118 M / 62 M parameters) are converted in memory; the others go
through a real file, ``refinenet convert`` and a safetensors folder.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from refinenet.cli import main as cli_main
from refinenet.convert import ConversionError, convert_checkpoint, convert_state_dict
from refinenet.folder import load_folder, model_from_state_dict

LAYOUTS = Path(__file__).parent / "data" / "checkpoint_layouts"


def read_layout(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (LAYOUTS / f"{name}.txt").read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(n) for n in re.findall(r"\d+", shape))))
    return rows


def synthetic_checkpoint(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly the layout's keys and shapes, random values (random batch-norm counters too)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in read_layout(name):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.randint(1, 10**6, shape, generator=gen, dtype=torch.int64)
        elif key.endswith("running_var"):  # a variance: positive, or batch norm yields NaN
            out[key] = torch.empty(shape).uniform_(0.5, 1.5, generator=gen)
        else:
            out[key] = torch.empty(shape).uniform_(-1, 1, generator=gen)
    return out


# --------------------------------------------------------------------------- expected names
# Written from spec section 2/3: MATLAB numbering is inverted (g1/outl1/stage1 = RefineNet-4).


def expected_name(key: str, layout: str) -> str:
    if "mobilenetv2" in layout:
        if key.startswith("layer"):
            return "backbone." + key
        fixed = {
            "conv7.weight": "refine4.adapt.0.project.0.weight",
            "conv8.weight": "refine4.adapt.0.project.1.weight",
            "conv5.weight": "refine3.adapt.0.project.0.weight",
            "conv6.weight": "refine3.adapt.0.project.1.weight",
            "conv4.weight": "refine2.adapt.0.project.0.weight",
            "conv3.weight": "refine1.adapt.0.project.0.weight",
            "conv_adapt4.weight": "refine3.fusion.convs.1.weight",
            "conv_adapt3.weight": "refine2.fusion.convs.1.weight",
            "conv_adapt2.weight": "refine1.fusion.convs.1.weight",
            "segm.weight": "classifier.weight",
            "segm.bias": "classifier.bias",
        }
        if key in fixed:
            return fixed[key]
        block, rest = key[3], key.split(".")[2]  # "crp4.0.3_outvar_dimred.weight"
        return f"refine{block}.crp.stages.{int(rest[0]) - 1}.weight"
    if key.split(".")[0] in ("conv1", "bn1") or key.startswith("layer"):
        return "backbone." + key
    if key.startswith("clf_conv."):
        return key.replace("clf_conv", "classifier")
    param = key.rsplit(".", 1)[1]
    digits = [int(c) for c in key.split(".")[0] if c.isdigit()]
    if key.startswith("p_ims1d2_outl"):
        return f"refine{5 - int(key[13])}.adapt.0.project.0.weight"
    if key.startswith("adapt_stage") and "_b2_joint" in key:
        return f"refine{5 - digits[0]}.fusion.convs.0.weight"
    if key.startswith("mflow_conv_g") and "_b3_joint" in key:
        return f"refine{4 - digits[0]}.fusion.convs.1.weight"
    stage = int(key[len("adapt_stage")] if key.startswith("adapt") else key[len("mflow_conv_g")])
    index = int(key.split(".")[2][0]) - 1  # "...0.{i}_..." counts from 1
    block = f"refine{5 - stage}"
    if "_pool." in key:
        return f"{block}.crp.stages.{index}.weight"
    unit = f"{block}.adapt.0.rcus.{index}" if key.startswith("adapt") else f"{block}.output_rcus.{index}"
    conv = "conv2" if "varout_dimred" in key else "conv1"
    return f"{unit}.{conv}.{param}"


def assert_every_tensor_carried(
    source: dict[str, torch.Tensor], converted: dict[str, torch.Tensor], layout: str
) -> None:
    targets = [expected_name(k, layout) for k in source]
    assert len(set(targets)) == len(targets), "the expected mapping itself must be one-to-one"
    assert set(converted) == set(targets) | {k for k in converted if k.endswith("num_batches_tracked")}
    for key, value in source.items():
        out = converted[expected_name(key, layout)]
        assert out.shape == value.shape, key
        assert torch.equal(out, value), f"{key} -> {expected_name(key, layout)} changed values"


# --------------------------------------------------------------------------- containers


def wrap(state_dict: dict[str, torch.Tensor], style: str) -> object:
    if style == "bare":
        return state_dict
    if style == "model":
        return {"model": state_dict, "epoch": 12}
    if style == "segmenter":  # the Light-Weight RefineNet training script's checkpoint
        return {"segmenter": state_dict, "epoch_start": 3, "best_val": 0.71}
    if style == "state_dict":
        return {"state_dict": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}}
    if style == "module":
        return {"module." + k: v for k, v in state_dict.items()}
    if style == "no-nbt":
        return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if style == "segmenter+module+no-nbt":
        return {"segmenter": {"module." + k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}}
    raise ValueError(style)


STYLES = ["bare", "model", "segmenter", "state_dict", "module", "no-nbt", "segmenter+module+no-nbt"]


def check_counters(
    source: dict[str, torch.Tensor], converted: dict[str, torch.Tensor], layout: str, style: str
) -> None:
    counters = {k: v for k, v in source.items() if k.endswith("num_batches_tracked")}
    assert counters, "every layout with batch norm lists its counters"
    for key, value in counters.items():
        out = converted[expected_name(key, layout)]
        expected = torch.zeros((), dtype=torch.int64) if "no-nbt" in style else value
        assert out.dtype == torch.int64 and out.shape == () and torch.equal(out, expected)


def strip_counters_for_compare(source, style):
    return {k: v for k, v in source.items() if not ("no-nbt" in style and k.endswith("num_batches_tracked"))}


# --------------------------------------------------------------------------- file round trips

FILE_CASES = [("drsleep-lw-mobilenetv2-voc21", style) for style in STYLES] + [
    ("drsleep-lw-resnet50-voc21", "segmenter+module+no-nbt")
]


@pytest.mark.parametrize(("layout", "style"), FILE_CASES)
def test_checkpoint_file_converts_to_a_strict_hub_folder(tmp_path, layout, style):
    source = synthetic_checkpoint(layout)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(wrap(source, style), path)
    out = tmp_path / "converted"
    conversion = convert_checkpoint(path, out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = load_folder(out)  # strict: any missing/unexpected key would raise here
    converted = model.state_dict()
    assert_every_tensor_carried(strip_counters_for_compare(source, style), converted, layout)
    check_counters(source, converted, layout, style)
    assert conversion.format.name == ("lw-refinenet-mobilenetv2" if "mobilenet" in layout else "lw-refinenet-resnet")
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96))
    assert logits.shape == (1, 21, 16, 24)
    if "mobilenet" in layout:  # (50 random ResNet layers overflow; the small network stays finite)
        assert torch.isfinite(logits).all()


def test_legacy_non_zip_checkpoint_files_are_read(tmp_path):
    """Checkpoints written by PyTorch < 1.6 use the old (non-zip) pickle format."""
    layout = "drsleep-lw-mobilenetv2-voc21"
    source = synthetic_checkpoint(layout, seed=3)
    path = tmp_path / "old.pth"
    torch.save({"model": source}, path, _use_new_zipfile_serialization=False)
    conversion = convert_checkpoint(path, tmp_path / "out")
    assert_every_tensor_carried(source, load_folder(tmp_path / "out").state_dict(), layout)
    assert conversion.config.backbone == "mobilenetv2-lw-authors"


# --------------------------------------------------------------------------- the large layouts, in memory

MEMORY_CASES = [
    ("drsleep-refinenet101-voc21", "module"),
    ("acrv-refinenet101-voc21", "state_dict"),
    ("drsleep-lw-resnet101-voc21", "model"),
    ("acrv-lw-resnet101-voc21", "no-nbt"),
    ("drsleep-lw-resnet152-voc21", "bare"),
]


@pytest.mark.parametrize(("layout", "style"), MEMORY_CASES)
def test_large_layouts_convert_and_load_strictly(layout, style):
    source = synthetic_checkpoint(layout)
    conversion = convert_state_dict(wrap(source, style))
    model = model_from_state_dict(conversion.config, conversion.state_dict)  # strict
    converted = model.state_dict()
    assert len(converted) == len(read_layout(layout))
    assert_every_tensor_carried(strip_counters_for_compare(source, style), converted, layout)
    check_counters(source, converted, layout, style)
    config = conversion.config
    full = "lw-" not in layout
    assert config.architecture == ("refinenet" if full else "lw-refinenet")
    assert config.backbone == ("resnet152" if "152" in layout else "resnet101")
    assert config.widths == [512, 256, 256, 256]
    assert (config.kernel_size, config.adapt_rcus, config.output_rcus) == ((3, 2, 3) if full else (1, 0, 0))
    assert config.crp_stages == 4 and config.crp_order == "pool-conv"
    assert config.num_classes == 21 and config.class_names[15] == "person"


def test_converted_configs_describe_the_published_models():
    mobilenet = convert_state_dict(synthetic_checkpoint("drsleep-lw-mobilenetv2-voc21")).config
    assert (mobilenet.architecture, mobilenet.backbone, mobilenet.activation) == (
        "lw-refinenet",
        "mobilenetv2-lw-authors",
        "relu6",
    )
    assert mobilenet.fuse_backbone_conv is False and mobilenet.widths == [256] * 4
    resnet50 = convert_state_dict(synthetic_checkpoint("drsleep-lw-resnet50-voc21")).config
    assert resnet50.backbone == "resnet50" and resnet50.fuse_backbone_conv is True
    for config in (mobilenet, resnet50):
        assert config.license == "other" and "non-commercial" in config.description
        assert config.datasets == ["PASCAL VOC 2012"]
        assert config.palette[1] == [128, 0, 0] and len(config.class_names) == 21


# --------------------------------------------------------------------------- refusals


def test_multitask_checkpoint_is_refused_naming_the_depth_head():
    source = synthetic_checkpoint("drsleep-multitask-mobilenetv2-nyud40-seg-depth")
    with pytest.raises(ConversionError, match="depth") as info:
        convert_state_dict(source)
    assert "pre_depth.weight" in str(info.value) and "depth.bias" in str(info.value)


def test_missing_tensor_is_named():
    source = synthetic_checkpoint("drsleep-lw-mobilenetv2-voc21")
    del source["crp2.0.3_outvar_dimred.weight"]
    with pytest.raises(ConversionError, match=r"refine2\.crp\.stages\.2\.weight"):
        convert_state_dict(source)


def test_unknown_extra_tensor_is_named():
    source = synthetic_checkpoint("drsleep-lw-resnet50-voc21")
    source["aux_clf.weight"] = torch.zeros(21, 256, 1, 1)
    with pytest.raises(ConversionError, match=r"no rule consumes.*\n\s+aux_clf\.weight"):
        convert_state_dict(source)


def test_wrong_shape_is_named_with_both_shapes():
    source = synthetic_checkpoint("drsleep-lw-mobilenetv2-voc21")
    source["conv_adapt3.weight"] = torch.zeros(256, 128, 1, 1)
    with pytest.raises(ConversionError, match=r"conv_adapt3\.weight \(256, 128, 1, 1\) -> refine2\.fusion"):
        convert_state_dict(source)


def test_forced_format_that_does_not_fit_fails():
    source = synthetic_checkpoint("drsleep-lw-mobilenetv2-voc21")
    with pytest.raises(ConversionError, match="layer3 has 2 blocks"):
        convert_state_dict(source, "lw-refinenet-resnet")


def test_unknown_layout_and_own_layout_are_refused(tiny_model):
    with pytest.raises(ConversionError, match="no known RefineNet layout"):
        convert_state_dict({"encoder.weight": torch.zeros(3), "decoder.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match="already follow this project's layout"):
        convert_state_dict(tiny_model.state_dict())


class NotATensor:
    """A pickled object that weights_only loading must refuse to construct."""

    def __reduce__(self):
        return (print, ("this code must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_and_garbage_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"model": NotATensor()}, handle)
    with pytest.raises(ConversionError, match="weights_only"):
        convert_checkpoint(evil, tmp_path / "out")
    assert "this code must never run" not in capsys.readouterr().out
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ConversionError, match="could not be read"):
        convert_checkpoint(garbage, tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_container_without_weights_is_described():
    with pytest.raises(ConversionError, match="'epoch'"):
        convert_state_dict({"epoch": 3, "best_val": 0.5})


# --------------------------------------------------------------------------- the model card and the CLI


def test_model_card_states_origin_licence_and_source_hash(tmp_path):
    layout = "drsleep-lw-mobilenetv2-voc21"
    path = tmp_path / "mbv2_voc.pth.tar"
    torch.save({"segmenter": synthetic_checkpoint(layout)}, path)
    convert_checkpoint(path, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["pipeline_tag"] == "image-segmentation" and meta["license"] == "other"
    assert meta["library_name"] and meta["datasets"] == ["PASCAL VOC 2012"] and meta["metrics"]
    assert "light-weight-refinenet" in body and "non-commercial" in body
    assert hashlib.sha256(path.read_bytes()).hexdigest() in body
    assert "mbv2_voc.pth.tar" in body


def test_cli_convert_then_refuses_to_overwrite(tmp_path, capsys):
    layout = "drsleep-lw-mobilenetv2-voc21"
    source = synthetic_checkpoint(layout, seed=7)
    path = tmp_path / "ck.pth"
    torch.save({"state_dict": source}, path)
    out = tmp_path / "folder"
    assert (
        cli_main(
            [
                "convert",
                str(path),
                "--out",
                str(out),
                "--class-names",
                ",".join(f"c{i}" for i in range(21)),
                "--dataset",
                "my data",
            ]
        )
        == 0
    )
    assert "lw-refinenet-mobilenetv2" in capsys.readouterr().out
    model = load_folder(out)
    assert model.config.class_names[3] == "c3" and model.config.datasets == ["my data"]
    assert_every_tensor_carried(source, model.state_dict(), layout)
    assert cli_main(["convert", str(path), "--out", str(out)]) == 1
    assert "already holds" in capsys.readouterr().err
    assert cli_main(["convert", str(path), "--out", str(out), "--overwrite"]) == 0


def test_cli_convert_reports_refusal(tmp_path, capsys):
    path = tmp_path / "multitask.pth"
    torch.save(synthetic_checkpoint("drsleep-multitask-mobilenetv2-nyud40-seg-depth"), path)
    assert cli_main(["convert", str(path), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "error: cannot convert" in err and "pre_depth.weight" in err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- MATLAB (stretch: refinement part)


def matlab_params(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for line in (LAYOUTS / f"matlab-refinenet101-refine-part-{variant}-crp.txt").read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = rng.standard_normal([int(n) for n in shape.split("x")]).astype("float32")
    return out


@pytest.mark.parametrize(("variant", "order"), [("original", "pool-conv"), ("improved", "conv-pool")])
def test_matlab_refinement_part_maps_totally_with_transposed_filters(variant, order):
    from refinenet.convert.matlab import convert_refine_part, crp_order

    params = matlab_params(variant)
    assert crp_order(params) == order
    converted = convert_refine_part(params)
    assert len(converted) == len(params) == 86
    pairs = {  # spot checks written from the spec: HxWxCinxCout -> Cout x Cin x H x W, g1 = RefineNet-4
        "p_ims1d2_outl2_dimred_filter": "refine3.adapt.0.project.0.weight",
        "mflow_conv_g1_b3_joint_varout_dimred_filter": "refine3.fusion.convs.1.weight",
        "mflow_conv_g4_b3_conv_relu_varout_dimred_filter": "refine1.output_rcus.2.conv2.weight",
    }
    pairs["adapt_stage1_b2_conv_filter" if variant == "original" else "adapt_input_path1_b2_conv_filter"] = (
        "refine4.adapt.0.rcus.1.conv1.weight"
    )
    pairs[
        "mflow_conv_g2_pool3_outvar_dimred_filter" if variant == "original" else "mflow_conv_g2_pool2_outvar_pb3_filter"
    ] = "refine3.crp.stages.2.weight"
    for source, target in pairs.items():
        value = params[source]
        out = converted[target]
        assert out.shape == (value.shape[3], value.shape[2], value.shape[0], value.shape[1])
        assert float(out[5, 7, 0, 2]) == float(value[0, 2, 7, 5])
    bias = params["mflow_conv_g3_b1_conv_bias"]
    assert torch.equal(converted["refine2.output_rcus.0.conv1.bias"], torch.from_numpy(bias.reshape(-1)))


def test_matlab_file_is_checked_then_refused_with_the_reason(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="reading .mat files needs scipy")
    params = matlab_params("original")
    params["conv1_filter"] = np.zeros((7, 7, 3, 64), dtype="float32")  # a backbone tensor
    table = np.zeros((1, len(params)), dtype=[("name", "O"), ("value", "O")])
    for i, item in enumerate(params.items()):
        table[0, i] = item
    path = tmp_path / "refinenet_res101_voc2012.mat"
    scipy_io.savemat(str(path), {"net": {"params": table}})
    with pytest.raises(ConversionError, match=r"refinement part \(86 tensors\) maps completely.*Caffe ResNet"):
        convert_checkpoint(path, tmp_path / "out")
    del params["mflow_conv_g1_pool2_outvar_dimred_filter"]
    table = np.zeros((1, len(params)), dtype=[("name", "O"), ("value", "O")])
    for i, item in enumerate(params.items()):
        table[0, i] = item
    scipy_io.savemat(str(path), {"net": {"params": table}})
    with pytest.raises(ConversionError, match=r"refine4\.crp\.stages\.1\.weight"):
        convert_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
