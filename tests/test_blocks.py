"""RCU, multi-resolution fusion and chained residual pooling against hand-computed values.

Expected values come from explicit numpy code (shifted maxima for max-pooling, the bilinear
formula for upsampling), never from the modules under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refinenet.blocks import ChainedResidualPooling, MultiResolutionFusion, ResidualConvUnit

pytestmark = pytest.mark.usefixtures("single_thread")


def set_identity(conv: torch.nn.Conv2d, scale: float = 1.0) -> None:
    """Kernel with ``scale`` at the centre for channel i -> i (first ``min(in, out)`` channels)."""
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.kernel_size[0] // 2
        for c in range(min(conv.in_channels, conv.out_channels)):
            conv.weight[c, c, k, k] = scale
        if conv.bias is not None:
            conv.bias.zero_()


def maxpool5_numpy(x: np.ndarray) -> np.ndarray:
    """Stride-1 5x5 max-pool with 2 cells of -inf padding, over the last two axes."""
    h, w = x.shape[-2:]
    padded = np.full(x.shape[:-2] + (h + 4, w + 4), -np.inf, dtype=np.float64)
    padded[..., 2 : h + 2, 2 : w + 2] = x
    out = np.full(x.shape, -np.inf, dtype=np.float64)
    for dy in range(5):
        for dx in range(5):
            out = np.maximum(out, padded[..., dy : dy + h, dx : dx + w])
    return out


def bilinear_align_corners_numpy(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling with ``align_corners=True`` written out: output cell i samples the
    input at ``i * (n_in - 1) / (n_out - 1)``."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            i0 = int(np.floor(src))
            i1 = min(i0 + 1, n_in - 1)
            frac = src - i0
            m[i, i0] += 1 - frac
            m[i, i1] += frac
        return m

    rows = weights(x.shape[-2], size[0])
    cols = weights(x.shape[-1], size[1])
    return np.einsum("Hh,...hw,Ww->...HW", rows, x.astype(np.float64), cols)


# ---------------------------------------------------------------------------------------------
# RCU


def test_rcu_with_zeroed_convs_is_the_identity():
    rcu = ResidualConvUnit(8)
    with torch.no_grad():
        for conv in (rcu.conv1, rcu.conv2):
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
    x = torch.randn(2, 8, 13, 7)
    assert torch.equal(rcu(x), x)


def test_rcu_computes_x_plus_conv_relu_conv_relu():
    # With identity kernels: x + relu(relu(x)) = x + relu(x), i.e. 2x where positive, x elsewhere.
    rcu = ResidualConvUnit(4)
    set_identity(rcu.conv1)
    set_identity(rcu.conv2)
    x = torch.randn(1, 4, 9, 11)
    expected = np.where(x.numpy() > 0, 2 * x.numpy(), x.numpy())
    np.testing.assert_allclose(rcu(x).detach().numpy(), expected, rtol=0, atol=1e-6)
    # The released layout: bias on the first conv only.
    assert rcu.conv1.bias is not None and rcu.conv2.bias is None


# ---------------------------------------------------------------------------------------------
# Multi-resolution fusion


def test_fusion_of_a_single_path_is_the_identity():
    fusion = MultiResolutionFusion([16], 16)
    x = torch.randn(1, 16, 7, 9)
    assert fusion([x]) is x
    assert sum(p.numel() for p in fusion.parameters()) == 0


@pytest.mark.parametrize("coarse_first", [False, True])
def test_fusion_of_two_paths_upsamples_to_the_finer_odd_size_and_sums(coarse_first):
    fine_channels, coarse_channels, width = 4, 6, 4
    order = [coarse_channels, fine_channels] if coarse_first else [fine_channels, coarse_channels]
    fusion = MultiResolutionFusion(order, width)
    for conv in fusion.convs:
        set_identity(conv)  # the coarse path keeps its first 4 channels
    fine = torch.randn(1, fine_channels, 15, 21)
    coarse = torch.randn(1, coarse_channels, 8, 11)
    out = fusion([coarse, fine] if coarse_first else [fine, coarse]).detach()
    assert out.shape == (1, width, 15, 21)
    expected = fine.numpy() + bilinear_align_corners_numpy(coarse.numpy()[:, :width], (15, 21))
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)
    # align_corners=True: the corner cells of the coarse map land exactly on the fine corners.
    np.testing.assert_allclose(
        out[0, :, -1, -1].numpy(), (fine[0, :, -1, -1] + coarse[0, :width, -1, -1]).numpy(), rtol=0, atol=1e-6
    )


def test_fusion_projects_to_the_block_width_with_one_conv_per_path():
    fusion = MultiResolutionFusion([256, 512], 256)
    assert [tuple(c.weight.shape) for c in fusion.convs] == [(256, 256, 3, 3), (256, 512, 3, 3)]
    assert all(c.bias is None for c in fusion.convs)


# ---------------------------------------------------------------------------------------------
# Chained residual pooling


def identity_crp(order: str, kernel_size: int, channels: int = 2) -> ChainedResidualPooling:
    crp = ChainedResidualPooling(channels, num_stages=4, kernel_size=kernel_size, order=order)
    for stage in crp.stages:
        set_identity(stage)
    return crp


@pytest.mark.parametrize("order", ["pool-conv", "conv-pool"])
@pytest.mark.parametrize("kernel_size", [3, 1])
def test_crp_stages_equal_chained_max_pools(order, kernel_size):
    crp = identity_crp(order, kernel_size)
    torch.manual_seed(1)
    x = torch.randn(1, 2, 19, 23)
    out, rec = crp(x, record=True)

    start = np.maximum(x.numpy().astype(np.float64), 0)  # the leading ReLU
    np.testing.assert_array_equal(rec.input.numpy(), start.astype(np.float32))
    path, running = start, start.copy()
    for i in range(4):
        path = maxpool5_numpy(path)  # each stage pools the previous stage's output
        running = running + path
        np.testing.assert_allclose(rec.branches[i].detach().numpy(), path, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rec.sums[i].detach().numpy(), running, rtol=0, atol=1e-5)
    assert torch.equal(out, rec.sums[-1])


@pytest.mark.parametrize("order", ["pool-conv", "conv-pool"])
def test_crp_context_grows_5_9_13_17_cells(order):
    crp = identity_crp(order, kernel_size=3, channels=1)
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1.0
    _, rec = crp(x, record=True)
    sides = []
    for branch in rec.branches:
        rows, cols = np.nonzero(branch[0, 0].detach().numpy())
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height == width and rows.min() + rows.max() == 40  # a square centred on the impulse
        sides.append(int(height))
    assert sides == [5, 9, 13, 17]
    assert crp.context_cells() == [5, 9, 13, 17]


def test_crp_order_decides_what_is_pooled():
    # With a negating conv (-1 at the centre) the two orders differ, and both follow the paper's
    # recipe: pool-conv is path = -pool(path); conv-pool is path = pool(-path).
    torch.manual_seed(2)
    x = torch.randn(1, 1, 17, 15)
    start = np.maximum(x.numpy().astype(np.float64), 0)
    for order in ("pool-conv", "conv-pool"):
        crp = ChainedResidualPooling(1, num_stages=3, kernel_size=3, order=order)
        for stage in crp.stages:
            set_identity(stage, scale=-1.0)
        _, rec = crp(x, record=True)
        path = start
        for i in range(3):
            path = -maxpool5_numpy(path) if order == "pool-conv" else maxpool5_numpy(-path)
            np.testing.assert_allclose(rec.branches[i].detach().numpy(), path, rtol=0, atol=1e-6)
    pool_conv = ChainedResidualPooling(1, num_stages=1, order="pool-conv")
    conv_pool = ChainedResidualPooling(1, num_stages=1, order="conv-pool")
    for crp in (pool_conv, conv_pool):
        set_identity(crp.stages[0], scale=-1.0)
    assert not torch.allclose(pool_conv(x), conv_pool(x))


def test_crp_convs_have_no_bias_and_bad_orders_are_refused():
    crp = ChainedResidualPooling(8)
    assert len(crp.stages) == 4 and all(stage.bias is None for stage in crp.stages)
    with pytest.raises(ValueError, match="order"):
        ChainedResidualPooling(8, order="parallel")
    with pytest.raises(ValueError, match="0 or more"):
        ChainedResidualPooling(8, num_stages=-1)


def test_crp_with_no_stages_is_the_activation_alone():
    """The paper's CRP ablation: without stages the block's fused input only passes the ReLU."""
    crp = ChainedResidualPooling(3, num_stages=0)
    x = torch.randn(2, 3, 7, 9)
    assert len(list(crp.parameters())) == 0
    assert torch.equal(crp(x), torch.relu(x))
    out, features = crp(x, record=True)
    assert torch.equal(out, features.input) and features.branches == () and features.sums == ()
