"""The Segmenter pipeline and predict(), on generated images and the tiny random model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import refinenet
from refinenet.images import ImageLoadError
from refinenet.inference import (
    DEFAULT_MAX_SIDE,
    SegmentationResult,
    Segmenter,
    predict,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# The Segmenter


@pytest.fixture(scope="module")
def segmenter(tiny_model) -> Segmenter:
    return Segmenter(tiny_model, device="cpu")


def test_single_scale_prediction_is_the_textbook_pipeline(segmenter, tiny_model):
    # Normalise with the config's mean/std, run the network, upsample the logits bilinearly to
    # the image size, argmax: computed here by hand in NCHW layout.
    image = noise(37, 53)
    result = segmenter.predict(image)
    x = (image / 255.0 - np.array(tiny_model.config.mean)) / np.array(tiny_model.config.std)
    with torch.inference_mode():
        logits = tiny_model(torch.from_numpy(x).permute(2, 0, 1)[None].float().contiguous())
    probabilities = F.interpolate(logits, size=(37, 53), mode="bilinear", align_corners=False).softmax(1)[0]
    top2 = probabilities.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()  # ignore near-ties that rounding could flip
    assert clear.mean() > 0.95
    assert np.array_equal(result.label_map[clear], probabilities.argmax(0).numpy()[clear])
    np.testing.assert_allclose(result.confidence, top2[0].numpy(), rtol=0, atol=1e-4)
    assert len(np.unique(result.label_map)) >= 3, "the fixture model should predict several classes"


@pytest.mark.parametrize(("height", "width"), [(37, 53), (1, 1), (3, 200), (200, 3)])
def test_label_map_has_the_original_odd_size(segmenter, height, width):
    result = segmenter.predict(noise(height, width))
    assert isinstance(result, SegmentationResult)
    assert result.image.size == (width, height)
    assert result.label_map.shape == (height, width) and result.label_map.dtype == np.uint8
    assert result.confidence.shape == (height, width) and result.confidence.dtype == np.float32
    assert result.input_size == (height, width)
    assert result.label_map.max() < 5
    assert np.all((result.confidence >= 1 / 5 - 1e-6) & (result.confidence <= 1 + 1e-6))
    assert set(result.seconds) == {"preprocess", "network", "postprocess"}


def test_big_images_are_capped_then_label_maps_come_back_at_full_size(tiny_model):
    segmenter = Segmenter(tiny_model, device="cpu", max_side=300)
    result = segmenter.predict(noise(901, 1203), return_features=True)
    # Long side 1203 -> 300; short side round(901 * 300 / 1203) = round(224.69) = 225.
    assert result.input_size == (225, 300)
    # MobileNetV2 at 225 x 300: 113 x 150 at 1/2, 57 x 75 at 1/4.
    assert result.features.logits.shape == (1, 5, 57, 75)
    assert result.label_map.shape == (901, 1203) and result.confidence.shape == (901, 1203)
    assert result.image.size == (1203, 901)
    # Nearest-neighbour upsampling of a 225-row map repeats rows: at most 225 distinct ones.
    assert len(np.unique(result.label_map, axis=0)) <= 225
    assert len(np.unique(result.label_map)) >= 2
    augmented = segmenter.predict(noise(901, 1203), scales=(0.5, 1.0), flip=True)
    assert augmented.input_size == (225, 300) and augmented.label_map.shape == (901, 1203)


def test_max_side_defaults_and_zero_disables_the_cap(tiny_model):
    assert Segmenter(tiny_model, device="cpu").max_side == DEFAULT_MAX_SIDE == 1024
    big_config = refinenet.refinenet_mobilenetv2(num_classes=3, widths=[16] * 4, input_size=1500)
    assert Segmenter(big_config, device="cpu").max_side == 1500
    uncapped = Segmenter(tiny_model, device="cpu", max_side=0)
    assert uncapped.predict(noise(40, 1100)).input_size == (40, 1100)
    assert Segmenter(tiny_model, device="cpu").predict(noise(40, 1100)).input_size == (37, 1024)


def test_flip_averaging_is_exactly_mirror_equivariant(segmenter):
    # p(x) = (f(x) + mirror(f(mirror x))) / 2, so p(mirror x) = mirror(p(x)) exactly. A flip
    # that is ignored, or not undone, breaks this: the network itself is not mirror-symmetric.
    image = noise(37, 53, seed=4)
    mirrored = image[:, ::-1].copy()
    plain = segmenter.predict(image)
    assert not np.array_equal(plain.label_map[:, ::-1], segmenter.predict(mirrored).label_map)
    a = segmenter.predict(image, flip=True)
    b = segmenter.predict(mirrored, flip=True)
    assert np.array_equal(a.label_map[:, ::-1], b.label_map)
    np.testing.assert_allclose(a.confidence[:, ::-1], b.confidence, rtol=0, atol=1e-6)
    assert not np.allclose(a.confidence, plain.confidence)


def test_multi_scale_with_flip_gives_a_valid_averaged_result(tiny_model):
    segmenter = Segmenter(tiny_model, device="cpu", scales=(0.75, 1.0, 1.25), flip=True)
    image = noise(37, 53, seed=5)
    result = segmenter.predict(image, return_features=True)
    assert result.label_map.shape == (37, 53) and result.input_size == (37, 53)
    assert result.label_map.max() < 5
    assert np.all((result.confidence >= 1 / 5 - 1e-6) & (result.confidence <= 1 + 1e-6))
    assert result.features.logits.shape == (1, 5, 10, 14)  # the scale-1 pass: 37x53 -> 10x14
    single = segmenter.predict(image, scales=(1.0,), flip=False)
    assert not np.allclose(result.confidence, single.confidence)
    mirrored = segmenter.predict(image[:, ::-1].copy())
    assert (mirrored.label_map[:, ::-1] == result.label_map).mean() > 0.99
    # Averaging identical passes changes nothing.
    twice = segmenter.predict(image, scales=(1.0, 1.0), flip=False)
    assert np.array_equal(twice.label_map, single.label_map)
    np.testing.assert_allclose(twice.confidence, single.confidence, rtol=0, atol=1e-6)


def test_batches_equal_single_predictions(segmenter):
    images = [noise(37, 53, seed=1), noise(40, 30, seed=2), noise(37, 53, seed=3)]
    batch_sizes = []
    handle = segmenter.model.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        batch = segmenter.predict_batch(images, batch_size=2)
    finally:
        handle.remove()
    assert batch_sizes == [2, 1]  # the two 37 x 53 images went through together
    for image, result in zip(images, batch, strict=True):
        single = segmenter.predict(image)
        assert result.label_map.shape == image.shape[:2]
        assert np.array_equal(result.label_map, single.label_map)
        np.testing.assert_allclose(result.confidence, single.confidence, rtol=0, atol=1e-5)


def test_features_are_on_the_cpu_and_match_the_label_map(segmenter):
    result = segmenter.predict(noise(37, 53), return_features=True)
    features = result.features
    assert [b.name for b in features.blocks] == ["RefineNet-4", "RefineNet-3", "RefineNet-2", "RefineNet-1"]
    assert [tuple(b.output.shape[-2:]) for b in features.blocks] == [(2, 2), (3, 4), (5, 7), (10, 14)]
    assert all(b.output.device.type == "cpu" and b.output.dtype == torch.float32 for b in features.blocks)
    upsampled = F.interpolate(features.logits, size=(37, 53), mode="bilinear", align_corners=False)
    assert (upsampled[0].argmax(0).numpy() == result.label_map).mean() > 0.999
    assert segmenter.predict(noise(37, 53)).features is None


def test_ablation_through_the_segmenter(segmenter):
    image = noise(37, 53)
    plain = segmenter.predict(image)
    cut = segmenter.predict(image, ablate_stride=8)
    assert not np.allclose(plain.confidence, cut.confidence)
    with pytest.raises(ValueError, match="ablate_stride"):
        segmenter.predict(image, ablate_stride=5)


def test_exif_rotated_photos_are_segmented_upright(segmenter, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(noise(20, 40)).save(path, exif=exif)
    result = segmenter.predict(path)
    assert result.image.size == (20, 40) and result.label_map.shape == (40, 20)


def test_bad_images_and_settings_are_refused(segmenter, tiny_model):
    with pytest.raises(ImageLoadError, match="not an image file"):
        segmenter.predict(b"GIF89a but not really")
    with pytest.raises(ValueError, match="scales"):
        Segmenter(tiny_model, device="cpu", scales=(1.0, -0.5))
    with pytest.raises(ValueError, match="batch_size"):
        segmenter.predict_batch([noise(5, 5)], batch_size=0)
    with pytest.raises(TypeError, match="RefineNet model"):
        Segmenter(torch.nn.Conv2d(3, 3, 1), device="cpu")


def test_predict_convenience(tiny_model):
    one = predict(noise(21, 17), tiny_model, device="cpu", flip=True)
    assert isinstance(one, SegmentationResult) and one.label_map.shape == (21, 17)
    two = predict([noise(21, 17), noise(9, 11)], tiny_model, device="cpu", return_features=True)
    assert [r.label_map.shape for r in two] == [(21, 17), (9, 11)]
    assert all(r.features is not None for r in two)
    assert refinenet.predict is predict


def test_predict_without_a_model_uses_the_default_model():
    """``model=None`` is the zoo's first model (bundled), the one the app opens with and
    ``refinenet predict`` uses without ``--model``."""
    from refinenet import zoo
    from refinenet.hub import from_pretrained

    photo = Path(__file__).resolve().parents[1] / "assets" / "chelsea-the-cat.jpg"
    result = predict(photo, device="cpu")
    default = from_pretrained(zoo.list_pretrained()[0].model_id)
    expected = Segmenter(default, device="cpu").predict(photo)
    assert isinstance(result, SegmentationResult)
    assert np.array_equal(result.label_map, expected.label_map)
    if "cat" in default.config.class_names:  # the VOC model: the photo is mostly cat
        assert np.mean(result.label_map == default.config.class_names.index("cat")) > 0.3


def test_features_carry_the_wiring_the_demo_draws(segmenter):
    """The output says which backbone levels each block fused and what those levels were, so
    that nothing downstream needs the model object."""
    features = segmenter.predict(noise(37, 53), return_features=True).features
    assert features.block_levels == ((32,), (16,), (8,), (4,))
    assert features.levels_of("RefineNet-2") == (8,)
    # MobileNetV2 at 37 x 53: 24, 32, 96 and 320 channels at 1/4 ... 1/32, each size halved, rounding up.
    assert [(level.stride, level.channels, level.size) for level in features.backbone] == [
        (4, 24, (10, 14)),
        (8, 32, (5, 7)),
        (16, 96, (3, 4)),
        (32, 320, (2, 2)),
    ]
    with pytest.raises(KeyError):
        features.levels_of("RefineNet-9")


def test_features_of_a_two_cascade_name_both_levels_of_each_block():
    torch.manual_seed(0)
    model = refinenet.refinenet_mobilenetv2(3, widths=[16, 16], cascade="2-cascade").eval()
    features = Segmenter(model, device="cpu").predict(noise(40, 48), return_features=True).features
    assert [b.name for b in features.blocks] == ["RefineNet-2", "RefineNet-1"]
    assert features.block_levels == ((16, 32), (4, 8))
