"""The inference fast path computes what the plain model computes, and the MAC counter is right.

Agreement is measured as the benchmark measures it: relative error of the logits
(``||fast - eager|| / ||eager||``) and the share of pixels whose argmax class agrees. fp32 paths
must agree to 1e-4, bf16 autocast to 1e-2, argmax on at least 99.5 % of pixels.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from conftest import calibrate_batch_norm, make_tiny_model
from torch import nn

import refinenet
from refinenet.flops import count_macs
from refinenet.runtime import (
    FastModel,
    SeparableMaxPool2d,
    fast_path,
    fold_batch_norms,
    replace_max_pools,
    select_device,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def argmax_agreement(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.argmax(1) == expected.argmax(1)).float().mean().item()


def brute_force_max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Max over every k x k window that fits inside the image (cells outside do not exist),
    written as plain loops: an independent reference for the 'same'-padded stride-1 pool."""
    n, c, h, w = x.shape
    r = k // 2
    out = torch.empty_like(x)
    for i, j in itertools.product(range(h), range(w)):
        window = x[:, :, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
        out[:, :, i, j] = window.amax(dim=(-2, -1))
    return out


# ---------------------------------------------------------------------------------------------
# Separable max-pool: exact


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 4, 2, 3), (1, 2, 1, 1), (1, 8, 6, 5)])
def test_separable_max_pool_is_the_full_window_max(k, shape):
    # All values negative: a pool that padded with zeros instead of -inf would show zeros at the
    # border. Ties are common because of the rounding to a coarse grid.
    generator = torch.Generator().manual_seed(k * 100 + shape[-1])
    x = -1 - (torch.rand(shape, generator=generator) * 8).round()
    expected = brute_force_max_pool(x, k)
    assert torch.equal(SeparableMaxPool2d(k)(x), expected)
    assert torch.equal(nn.MaxPool2d(k, 1, k // 2)(x), expected)  # the layer it replaces agrees too
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(SeparableMaxPool2d(k)(channels_last), expected)


def test_separable_max_pool_matches_max_pool_on_infinities_and_bf16():
    x = torch.randn(1, 4, 12, 10)
    x[0, 0, 3, 4] = float("inf")
    x[0, 1, :, :] = float("-inf")  # a channel of -inf stays -inf (no padding value leaks in)
    pool = nn.MaxPool2d(5, 1, 2)
    assert torch.equal(SeparableMaxPool2d(5)(x), pool(x))
    half = x.to(torch.bfloat16)
    assert torch.equal(SeparableMaxPool2d(5)(half), pool(half))


def test_only_exactly_equivalent_pools_are_replaced():
    model = nn.Sequential(
        nn.MaxPool2d(5, 1, 2),  # replaced
        nn.MaxPool2d(3, stride=1, padding=1),  # replaced
        nn.MaxPool2d(3, 2, 1),  # stride 2: kept
        nn.MaxPool2d(5, 1, 1),  # not 'same' padding: kept
        nn.MaxPool2d(4, 1, 2),  # even window: kept
        nn.MaxPool2d(3, 1, 1, ceil_mode=True),  # ceil mode: kept
        nn.MaxPool2d(3, 1, 2, dilation=2),  # dilated: kept
        nn.MaxPool2d((3, 5), 1, (1, 2)),  # not square: kept
    )
    assert replace_max_pools(model) == 2
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["SeparableMaxPool2d"] * 2 + ["MaxPool2d"] * 6
    with pytest.raises(ValueError):
        SeparableMaxPool2d(4)


def test_crp_pools_of_a_model_are_replaced_without_touching_the_state_dict():
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        expected = model(x)
        assert replace_max_pools(model) == 4  # one pool module per CRP, 4 blocks
        actual = model(x)
    assert all(isinstance(block.crp.pool, SeparableMaxPool2d) for _, block in model.blocks())
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert relative_error(actual, expected) < 1e-6


# ---------------------------------------------------------------------------------------------
# Batch-norm folding


def _random_bn(bn: nn.BatchNorm2d, generator: torch.Generator) -> None:
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=generator))


class ReusedConv(nn.Module):
    """A conv whose output feeds a BN *and* a shortcut: folding would change the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_batch_norms_folds_conv_bn_pairs_exactly():
    generator = torch.Generator().manual_seed(1)
    reused = ReusedConv()
    model = nn.Sequential(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.BatchNorm2d(8),  # follows an activation, not a conv: kept
        ),
        nn.Conv2d(8, 4, 1),
        reused,
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_bn(m, generator)
    model.eval()
    x = torch.randn(2, 3, 17, 15, generator=generator)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batch_norms(model)
        actual = model(x)
    assert folded == [("0.0", "0.1"), ("0.3", "0.4")]
    assert isinstance(model[0][1], nn.Identity) and isinstance(model[0][4], nn.Identity)
    assert isinstance(model[0][6], nn.BatchNorm2d) and isinstance(reused.bn, nn.BatchNorm2d)
    assert model[0][0].bias is not None  # the BN shift became the conv's bias
    assert relative_error(actual, expected) < 1e-6


def test_fold_batch_norms_refuses_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train())


def test_every_backbone_bn_of_every_architecture_is_folded():
    # ResNet (conv/bn attribute pairs, downsample Sequential), torchvision MobileNetV2 and the
    # authors' MobileNet-v2: every BatchNorm2d of these backbones directly follows a conv.
    builders = {
        "resnet50": lambda: refinenet.lw_refinenet_resnet50(3, widths=[16] * 4),
        "mobilenetv2": lambda: refinenet.refinenet_mobilenetv2(3, widths=[16] * 4),
        "authors": lambda: refinenet.lw_refinenet_mobilenetv2(3, widths=[16] * 4, authors_layout=True),
    }
    for name, build in builders.items():
        with torch.device("meta"):
            model = build().eval()
        norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert norms > 0
        # Folding on meta tensors checks the pairing, not the arithmetic (tested above).
        folded = fold_batch_norms(model)
        assert len(folded) == norms, name
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), name


# ---------------------------------------------------------------------------------------------
# The fast path against eager fp32


def _lw_tiny() -> nn.Module:
    torch.manual_seed(3)
    model = refinenet.lw_refinenet_mobilenetv2(5, widths=[32] * 4, authors_layout=True)
    return calibrate_batch_norm(model)


@pytest.mark.parametrize("build", [make_tiny_model, _lw_tiny], ids=["refinenet-mobilenetv2", "lw-authors"])
def test_fast_path_agrees_with_eager_fp32(build):
    model = build().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 131, 97, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    fast = fast_path(model, "cpu")
    actual = fast(x)
    assert isinstance(fast, FastModel)
    assert fast.settings.dtype == "fp32" and not fast.settings.compile
    assert fast.settings.folded_batch_norms > 0 and fast.settings.replaced_pools == 4
    assert actual.dtype == torch.float32 and actual.shape == expected.shape and actual.is_contiguous()
    assert relative_error(actual, expected) < 1e-4
    assert argmax_agreement(actual, expected) >= 0.995
    # The original is untouched: same keys, same values, BN still there, default layout.
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fast_path_features_and_ablation_agree_with_eager(tiny_model):
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    fast = fast_path(tiny_model, "cpu")
    with torch.no_grad():
        expected = tiny_model(x, return_features=True)
        expected_ablated = tiny_model(x, ablate_stride=8)
    actual = fast(x, return_features=True)
    assert [b.name for b in actual.blocks] == [b.name for b in expected.blocks]
    assert relative_error(actual.logits, expected.logits) < 1e-4
    for got, want in zip(actual.blocks, expected.blocks, strict=True):
        assert relative_error(got.output, want.output) < 1e-4
        for g, w in zip(got.crp.sums, want.crp.sums, strict=True):
            assert relative_error(g, w) < 1e-4
    ablated = fast(x, ablate_stride=8)
    assert relative_error(ablated, expected_ablated) < 1e-4
    assert relative_error(ablated, expected.logits) > 1e-3  # the ablation did cut something


def test_fast_path_bf16_autocast_on_cpu_is_within_bf16_tolerance(tiny_model):
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = tiny_model(x)
    fast = fast_path(tiny_model, "cpu", dtype="bf16")
    actual = fast(x)
    assert fast.settings.dtype == "bf16" and actual.dtype == torch.float32
    error = relative_error(actual, expected)
    assert 1e-6 < error < 1e-2  # it did run in bf16 (not exact), and stayed within tolerance
    # Rounding can only flip pixels whose two best classes nearly tie. A random network has
    # many such pixels (about 5 % here; a trained one has few), so the 99.5 % bar is checked
    # on pixels with a clear winner, and all pixels must still agree at 99 %.
    best_two = expected.topk(2, dim=1).values
    clear = (best_two[:, 0] - best_two[:, 1]) > 0.05 * expected.std()
    agree = actual.argmax(1) == expected.argmax(1)
    assert clear.float().mean() > 0.9
    assert agree[clear].float().mean() >= 0.995
    assert agree.float().mean() >= 0.99


def test_bf16_keeps_the_backbone_in_fp32_even_in_a_copy(tiny_model):
    fast = fast_path(tiny_model, "cpu", dtype="bf16")
    everything = fast_path(tiny_model, "cpu", dtype="bf16", low_precision_backbone=True)
    twin = copy.deepcopy(fast.model)
    with torch.no_grad():
        for p in twin.backbone.parameters():
            p.zero_()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        own, copied, low = fast.model.backbone(x), twin.backbone(x), everything.model.backbone(x)
    assert all(t.dtype == torch.float32 for t in own)  # autocast is off inside the backbone
    assert all(t.dtype == torch.bfloat16 for t in low)
    # The copy's backbone runs the copy's (zeroed) weights, not the original's.
    assert own[0].abs().sum() > 0 and copied[0].abs().sum() == 0


def test_fast_model_wraps_a_copy_and_shows_only_its_config(tiny_model):
    fast = fast_path(tiny_model, "cpu")
    assert fast.config is fast.model.config
    assert fast.model.block_names == tiny_model.block_names
    assert fast.model.backbone.channels_at(4) == tiny_model.backbone.channels_at(4)
    # The wrapped model's structure does not show through: it is read from the outputs instead.
    for name in ("block_names", "block_levels", "backbone"):
        assert not hasattr(fast, name)
    assert not fast.training and not fast.model.training
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()
    # Its state dict is the fused copy's, each key once (no second copy from a compiled module).
    keys = list(fast.state_dict())
    assert len(keys) == len(set(keys)) and all(k.startswith("model.") for k in keys)
    with pytest.raises(AttributeError):
        _ = fast.no_such_attribute
    with pytest.raises(ValueError, match="dtype"):
        fast_path(tiny_model, "cpu", dtype="int8")


def test_segmenter_runs_on_the_fast_model(tiny_model):
    from refinenet.inference import Segmenter

    image = (torch.rand(60, 80, 3, generator=torch.Generator().manual_seed(6)) * 255).to(torch.uint8).numpy()
    plain = Segmenter(make_tiny_model(), device="cpu").predict(image)
    fast = Segmenter(fast_path(tiny_model, "cpu"), device="cpu").predict(image, return_features=True)
    assert (fast.label_map == plain.label_map).mean() >= 0.995
    assert fast.features is not None and len(fast.features.blocks) == 4


@pytest.mark.slow
def test_compiled_fast_path_agrees_with_eager(tiny_model):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = tiny_model(x)
    fast = fast_path(tiny_model, "cpu", compile=True)
    assert fast.settings.compile
    actual = fast(x)
    assert relative_error(actual, expected) < 1e-4
    assert argmax_agreement(actual, expected) >= 0.995


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_path_with_graphs_agrees_with_eager_fp32(tiny_model):
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = tiny_model(x)
    fast = fast_path(tiny_model, "cuda", cuda_graphs=True, compile=False)
    assert fast.settings.dtype in ("bf16", "fp16") and fast.settings.cudnn_benchmark
    first, second = fast(x).cpu(), fast(x * 1.0).cpu()  # capture, then replay
    assert torch.equal(first, second)
    assert relative_error(second, expected) < 1e-2
    assert argmax_agreement(second, expected) >= 0.995


# ---------------------------------------------------------------------------------------------
# Device choice, and what the fast path does to the model


def test_select_device_and_the_fast_path_layout():
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device(None).type in ("cpu", "mps")
        with pytest.raises(RuntimeError, match="no CUDA"):
            select_device("cuda")
    model = make_tiny_model().train()
    fast = fast_path(model, "cpu")
    assert fast.model is not model and model.training  # the original is left as it was
    assert not fast.training and not fast.model.training
    assert fast.settings.device == "cpu" and fast.settings.channels_last
    weight = fast.model.refine1.crp.stages[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    original = model.refine1.crp.stages[0].weight
    assert original.is_contiguous() and not original.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# Multiply-adds


def test_conv_and_linear_macs_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 10x12 -> 5x6: 8*5*6 outputs, 3*3*3 MACs each
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 8*5*6 outputs, 1*3*3 each
        nn.Conv2d(8, 4, 1),  # 4*5*6 outputs, 8 each
        nn.Flatten(),
        nn.Linear(4 * 5 * 6, 7),  # 7 outputs, 120 each
    )
    count = count_macs(model, (10, 12))
    assert count.by_layer == {"0": 8 * 30 * 27, "1": 8 * 30 * 9, "2": 4 * 30 * 8, "4": 7 * 120}
    assert count.total == 6480 + 2160 + 960 + 840
    assert count_macs(model, (10, 12), batch=3).total == 3 * count.total


@pytest.mark.parametrize(
    "build, expected_g",
    [
        (lambda: refinenet.refinenet_resnet101(21), 262.9),
        (lambda: refinenet.lw_refinenet_resnet50(21), 32.0),
        (lambda: refinenet.lw_refinenet_resnet101(21), 51.4),
        (lambda: refinenet.lw_refinenet_resnet152(21), 70.8),
        (lambda: refinenet.lw_refinenet_mobilenetv2(21, authors_layout=True), 8.6),
    ],
    ids=["refinenet-101", "lw-50", "lw-101", "lw-152", "lw-mobilenetv2"],
)
def test_macs_reproduce_the_published_figures_at_512(build, expected_g):
    with torch.device("meta"):  # shapes only: builds and counts in well under a second
        model = build()
    count = count_macs(model, 512)
    assert count.total / 1e9 == pytest.approx(expected_g, rel=0.01)
    groups = count.by_prefix(1)
    assert sum(groups.values()) == count.total
    assert set(groups) == {"backbone", "refine4", "refine3", "refine2", "refine1", "classifier"}


def test_count_macs_leaves_the_model_as_it_was():
    model = make_tiny_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count = count_macs(model, (64, 96))
    assert count.total > 0 and model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # MACs scale with the pixel count (every layer is a convolution over the grid).
    assert count_macs(model, (128, 192)).total == pytest.approx(4 * count.total, rel=0.02)
