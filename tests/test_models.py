"""Every architecture's output shapes, the recorded features, ablation and parameter counts.

Expected sizes for a 225 x 301 input are worked out from the conv arithmetic
``out = floor((in + 2 * pad - kernel) / stride) + 1``:

- stride 2 (ResNet's 7x7/pad 3 conv, MobileNetV2's 3x3/pad 1 conv): 225 -> 113, 301 -> 151
- stride 4 (3x3/pad 1 max-pool or conv, stride 2):                  113 -> 57,  151 -> 76
- stride 8:                                                          57 -> 29,   76 -> 38
- stride 16:                                                         29 -> 15,   38 -> 19
- stride 32:                                                         15 -> 8,    19 -> 10
"""

from __future__ import annotations

import pytest
import torch

import refinenet
from refinenet import count_parameters

H, W = 225, 301
GRID = {4: (57, 76), 8: (29, 38), 16: (15, 19), 32: (8, 10)}
SMALL = [32, 16, 16, 16]
CLASSES = 5

pytestmark = pytest.mark.usefixtures("single_thread")

# case -> (registered architecture, kwargs, block strides deepest first, widths)
ARCHITECTURES = {
    "refinenet-resnet50": ("refinenet_resnet50", {}, [32, 16, 8, 4], SMALL),
    "refinenet-resnet101": ("refinenet_resnet101", {}, [32, 16, 8, 4], SMALL),
    "refinenet-resnet152": ("refinenet_resnet152", {}, [32, 16, 8, 4], SMALL),
    "refinenet-mobilenetv2": ("refinenet_mobilenetv2", {}, [32, 16, 8, 4], SMALL),
    "lw-resnet50": ("lw_refinenet_resnet50", {}, [32, 16, 8, 4], SMALL),
    "lw-resnet101": ("lw_refinenet_resnet101", {}, [32, 16, 8, 4], SMALL),
    "lw-resnet152": ("lw_refinenet_resnet152", {}, [32, 16, 8, 4], SMALL),
    "lw-mobilenetv2": ("lw_refinenet_mobilenetv2", {}, [32, 16, 8, 4], SMALL),
    "lw-mobilenetv2-authors": ("lw_refinenet_mobilenetv2", {"authors_layout": True}, [32, 16, 8, 4], SMALL),
    "refinenet-mobilenetv2-os16": ("refinenet_mobilenetv2", {"output_stride": 16}, [16, 16, 8, 4], SMALL),
    "refinenet-resnet50-os16": ("refinenet_resnet50", {"output_stride": 16}, [16, 16, 8, 4], SMALL),
    "refinenet-2-cascade": ("refinenet_resnet50", {"cascade": "2-cascade"}, [16, 4], [32, 16]),
    "refinenet-1-cascade": ("refinenet_resnet50", {"cascade": "1-cascade"}, [4], [16]),
    "refinenet-conv-pool-crp": ("refinenet_mobilenetv2", {"crp_order": "conv-pool"}, [32, 16, 8, 4], SMALL),
}


def build(name: str):
    architecture, kwargs, _, widths = ARCHITECTURES[name]
    torch.manual_seed(0)
    return refinenet.get_model(architecture, num_classes=CLASSES, widths=widths, **kwargs).eval()


def test_every_registered_architecture_is_covered_and_named_after_its_builder():
    assert {architecture for architecture, *_ in ARCHITECTURES.values()} == set(refinenet.list_models())
    assert refinenet.list_models() == sorted(refinenet.list_models())
    assert refinenet.list_models("lw_*") == [n for n in refinenet.list_models() if n.startswith("lw_")]
    for name in refinenet.list_models():
        assert getattr(refinenet, name).__name__ == name
    assert not {entry.model_id for entry in refinenet.list_pretrained()} & set(refinenet.list_models())
    with pytest.raises(KeyError, match="refinenet_resnet101"):
        refinenet.get_model("refinenet_vit")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_output_shapes_at_an_odd_input_size(name):
    _, _, strides, widths = ARCHITECTURES[name]
    model = build(name)
    x = torch.randn(1, 3, H, W)
    with torch.inference_mode():
        out = model(x, return_features=True)  # logits identical to the plain call: see below
    assert out.logits.shape == (1, CLASSES, 57, 76)
    assert out.stride == 4
    assert [b.stride for b in out.blocks] == strides
    n = len(strides)
    assert [b.name for b in out.blocks] == [f"RefineNet-{n - i}" for i in range(n)]
    for block, stride, width in zip(out.blocks, strides, widths, strict=True):
        assert block.output.shape == (1, width, *GRID[stride])
        assert block.crp.input.shape == block.output.shape
        assert len(block.crp.branches) == len(block.crp.sums) == 4


def test_the_cascade_variants_wire_the_levels_as_in_the_paper():
    two = build("refinenet-2-cascade")
    assert two.block_levels == [(3, 4), (1, 2)]
    assert len(two.refine2.adapt) == 2 and len(two.refine1.adapt) == 2
    one = build("refinenet-1-cascade")
    assert one.block_levels == [(1, 2, 3, 4)] and len(one.refine1.adapt) == 4
    assert build("refinenet-conv-pool-crp").refine4.crp.order == "conv-pool"


@pytest.mark.parametrize("name", ["refinenet-mobilenetv2", "lw-mobilenetv2-authors"])
def test_return_features_is_faithful(name):
    model = build(name)
    torch.manual_seed(3)
    x = torch.randn(1, 3, 97, 131)
    with torch.inference_mode():
        plain = model(x)
        out = model(x, return_features=True)
        assert torch.equal(out.logits, plain)
        assert [b.stride for b in out.blocks] == [32, 16, 8, 4]
        assert [b.output.shape[1] for b in out.blocks] == model.config.widths
        assert out.block("RefineNet-1") is out.blocks[-1]

        taps = model.backbone(x)  # the authors' MobileNet-v2 has two taps at strides 16 and 32
        by_stride: dict[int, list[torch.Tensor]] = {}
        for tap, info in zip(taps, model.backbone.feature_info, strict=True):
            by_stride.setdefault(info.stride, []).append(tap)
        coarse = None
        for (name_, block), rec in zip(model.blocks(), out.blocks, strict=True):
            assert rec.name == name_
            # The CRP input is relu (relu6) of the fused input, recomputed from the block's parts.
            paths = [block.adapt[0](by_stride[rec.stride])]
            if coarse is not None:
                paths.append(coarse)
            fused = block.fusion(paths)
            assert torch.equal(rec.crp.input, block.crp.activation(fused))
            assert torch.equal(block.crp.activation(fused), fused.clamp(0, 6 if name.startswith("lw") else None))
            # The running sum chains the branches, and its last value is the CRP output.
            assert torch.equal(rec.crp.sums[0], rec.crp.input + rec.crp.branches[0])
            for i in range(1, 4):
                assert torch.equal(rec.crp.sums[i], rec.crp.sums[i - 1] + rec.crp.branches[i])
            assert torch.equal(rec.output, block.output_rcus(rec.crp.sums[-1]))
            coarse = rec.output
        assert torch.equal(out.logits, model.classifier(out.blocks[-1].output))


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_output_stride_16_is_the_same_network_computed_a_trous(backbone):
    """Dilating instead of striding (Chen et al.'s "a trous" identity): with the same weights,
    the deepest map at output stride 16, read at every other row and column, is the map at 32.
    That holds only if exactly the right convolution lost its stride and exactly the ones after
    it are dilated, with matching padding."""
    from refinenet.backbones import build_backbone

    torch.manual_seed(0)
    at_32 = build_backbone(backbone).eval()
    at_16 = build_backbone(backbone, output_stride=16).eval()
    at_16.load_state_dict(at_32.state_dict(), strict=True)
    assert [f.stride for f in at_16.feature_info][-1] == 16 and at_16.level_stride(4) == 16
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        coarse, fine = at_32(x), at_16(x)
    assert fine[-1].shape[-2:] == (4, 6) and coarse[-1].shape[-2:] == (2, 3)
    torch.testing.assert_close(fine[-1][..., ::2, ::2], coarse[-1], rtol=1e-3, atol=1e-3)  # summation order
    for a, b in zip(coarse[:-1], fine[:-1], strict=True):
        assert torch.equal(a, b)  # the finer levels are untouched


def test_ablation_cuts_exactly_one_level(calibrate):
    model = calibrate(build("refinenet-mobilenetv2"))  # so that deep levels matter
    x = torch.randn(1, 3, 97, 131)
    with torch.inference_mode():
        plain = model(x, return_features=True)
        for stride in (4, 8, 16, 32):
            cut = model(x, ablate_stride=stride, return_features=True)
            assert (cut.logits - plain.logits).abs().max() > 0.1
            for before, after in zip(plain.blocks, cut.blocks, strict=True):
                # Blocks deeper than the cut level do not see it; the others all change.
                assert torch.equal(before.output, after.output) == (before.stride > stride)
        with pytest.raises(ValueError, match="ablate_stride"):
            model(x, ablate_stride=7)
        with pytest.raises(ValueError, match="ablate_stride"):
            model(x, ablate_stride=64)


# Parameter counts only need shapes, so the models are built on the meta device (no memory,
# no initialisation): the same modules, the same parameter tensors, in a fraction of a second.
@pytest.mark.parametrize(
    ("builder", "kwargs", "millions"),
    [
        (refinenet.lw_refinenet_resnet50, {}, 27.36),
        (refinenet.lw_refinenet_resnet101, {}, 46.35),
        (refinenet.lw_refinenet_resnet152, {}, 61.99),
        (refinenet.lw_refinenet_mobilenetv2, {"authors_layout": True}, 3.28),
    ],
)
def test_light_weight_parameter_counts(builder, kwargs, millions):
    with torch.device("meta"):
        model = builder(num_classes=21, **kwargs)
    assert round(count_parameters(model) / 1e6, 2) == millions


def test_refinenet_101_has_exactly_the_released_parameter_count():
    with torch.device("meta"):
        model = refinenet.refinenet_resnet101(num_classes=21)
    assert count_parameters(model) == 118_052_437


def test_rescaling_the_mobilenetv2_taps_changes_nothing_but_their_scale():
    """The exact reparametrisation that gives a converted encoder's features a usable scale:
    each tap is multiplied by its factor, and every later feature (taps included) is otherwise
    unchanged, in eval mode with arbitrary batch-norm statistics."""
    from refinenet.backbones import build_backbone, rescale_mobilenetv2_taps

    torch.manual_seed(0)
    backbone = build_backbone("mobilenetv2").eval()
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    x = torch.randn(2, 3, 96, 96)
    scales = [2.0, 0.5, 3.0, 0.1]
    with torch.no_grad():
        before = backbone(x)
        rescale_mobilenetv2_taps(backbone, scales)
        after = backbone(x)
    for tap_after, tap_before, scale in zip(after, before, scales, strict=True):
        torch.testing.assert_close(tap_after, tap_before * scale, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one scale per tap"):
        rescale_mobilenetv2_taps(backbone, [1.0])
