"""Image loading (bad inputs, colour modes, EXIF) and the Segmenter pipeline, on generated images."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import refinenet
from refinenet.inference import (
    DEFAULT_MAX_SIDE,
    ImageLoadError,
    SegmentationResult,
    Segmenter,
    load_image,
    predict,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose data is that of a 4 x 4 image: any
    attempt to decode it fails, so a size error proves the header was checked first."""
    data = bytearray(encode(Image.new("RGB", (4, 4))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Bad inputs: every one is an ImageLoadError whose message says what is wrong.


def test_empty_bytes(tmp_path):
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.png' is empty"):
        load_image(empty)


def test_corrupt_bytes_and_non_image_files(tmp_path):
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_image(np.random.default_rng(0).bytes(2000))
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n" * 20)
    with pytest.raises(ImageLoadError, match=r"notes\.png' is not an image file"):
        load_image(text)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_damaged_headers():
    # A JPEG signature followed by rubbish: Pillow recognises the format, then fails in the header.
    with pytest.raises(ImageLoadError, match="damaged image file"):
        load_image(b"\xff\xd8\xff\xe0 not really a JPEG" + bytes(300))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt):
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])
    # The same file opened lazily by the caller (Image.open decodes nothing yet).
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(Image.open(io.BytesIO(data[: len(data) // 2])))


def test_decompression_bomb_is_refused_from_the_header_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked DecompressionBombWarning would fail the test
        with pytest.raises(ImageLoadError, match="decompression-bomb"):
            load_image(png_declaring(100_000, 100_000))
        # Above our limit (120 M) but below Pillow's hard one: our message, with the size.
        with pytest.raises(ImageLoadError, match=r"too large: 12000 x 12000 = 144,000,000 pixels"):
            load_image(png_declaring(12_000, 12_000))


def test_pixel_limit_is_checked_before_decoding():
    # The data behind this header is 4 x 4: decoding would fail as "truncated". "too large"
    # proves that the size was refused from the header alone.
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(png_declaring(300, 300), max_pixels=50_000)
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(png_declaring(300, 300), max_pixels=100_000)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(noise(300, 300), max_pixels=50_000)


def test_zero_sized_images():
    for image in (Image.new("RGB", (0, 0)), Image.new("L", (0, 7))):
        with pytest.raises(ImageLoadError, match="has no pixels"):
            load_image(image)
    with pytest.raises(ImageLoadError, match="has no pixels"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((5, 5, 2), dtype=np.uint8), r"shape \(5, 5, 2\)"),
    (np.zeros((3, 20, 30), dtype=np.uint8), "channels first"),
    (np.zeros((2, 5, 5, 3), dtype=np.uint8), "expected H x W"),
    (np.full((4, 4, 3), 2.0), r"values in \[2, 2\].*\[0, 1\]"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.full((4, 4), -3, dtype=np.int32), "expected 0..255"),
    (np.zeros((4, 4), dtype=np.complex64), "dtype complex64"),
])
def test_bad_arrays(array, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(array)


def test_unsupported_source_type():
    with pytest.raises(ImageLoadError, match="cannot load an image from a int"):
        load_image(42)


# ---------------------------------------------------------------------------------------------
# Colour modes: RGB at the right size with the right colours.


def _p_with_transparency() -> Image.Image:
    image = Image.new("P", (13, 7), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.info["transparency"] = 0
    return image


def _mode_cases():
    one = Image.new("1", (13, 7), 0)
    one.putpixel((0, 0), 1)
    grey = Image.new("L", (13, 7), 100)
    grey_alpha = Image.new("LA", (13, 7), (100, 255))
    grey_alpha.putpixel((0, 0), (100, 0))
    rgba = Image.new("RGBA", (13, 7), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    cmyk = Image.new("CMYK", (13, 7), (0, 255, 255, 0))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    deep = Image.fromarray(np.full((7, 13), 257 * 100, dtype=np.uint16))
    deep.putpixel((0, 0), 65535)
    wide = Image.fromarray(np.full((7, 13), 0, dtype=np.int32))
    wide.putpixel((0, 0), 65535)
    floating = Image.fromarray(np.full((7, 13), 0.5, dtype=np.float32))
    floating.putpixel((0, 0), 1.0)
    white, red = (255, 255, 255), (255, 0, 0)
    # (name, source, mode Pillow should report, expected pixel (0, 0), expected pixel (1, 0))
    return [
        ("1", encode(one), "1", white, (0, 0, 0)),
        ("L", encode(grey), "L", (100, 100, 100), (100, 100, 100)),
        ("LA", encode(grey_alpha), "LA", white, (100, 100, 100)),
        ("P+transparency", encode(_p_with_transparency(), transparency=0), "P", white, (0, 0, 255)),
        ("RGBA", encode(rgba), "RGBA", white, red),
        ("CMYK", encode(cmyk, "TIFF"), "CMYK", white, red),
        ("I;16", encode(deep), "I;16", white, (100, 100, 100)),
        ("I", wide, "I", white, (0, 0, 0)),
        ("F", floating, "F", white, (128, 128, 128)),
    ]


@pytest.mark.parametrize(("name", "source", "mode", "first", "second"), _mode_cases(),
                         ids=[case[0] for case in _mode_cases()])
def test_colour_modes_become_rgb(name, source, mode, first, second):
    opened = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
    assert opened.mode == mode, "the test image must really be in the mode under test"
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (13, 7)
    assert image.getpixel((0, 0)) == first
    assert image.getpixel((1, 0)) == second


def test_half_transparent_pixels_are_blended_on_white():
    rgba = Image.new("RGBA", (3, 2), (255, 0, 0, 128))
    r, g, b = load_image(encode(rgba)).getpixel((0, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


@pytest.mark.parametrize(("array", "expected"), [
    (np.full((7, 13), 200, dtype=np.uint8), (200, 200, 200)),
    (np.full((7, 13, 1), 200, dtype=np.uint8), (200, 200, 200)),
    (np.full((7, 13, 3), [10, 20, 30], dtype=np.uint8), (10, 20, 30)),
    (np.full((7, 13, 3), [0.0, 0.5, 1.0], dtype=np.float32), (0, 128, 255)),
    (np.full((7, 13, 4), [10, 20, 30, 0], dtype=np.uint8), (255, 255, 255)),
    (np.full((7, 13, 4), [10, 20, 30, 255], dtype=np.uint8), (10, 20, 30)),
    (np.ones((7, 13), dtype=bool), (255, 255, 255)),
    (np.full((7, 13), 257 * 40, dtype=np.uint16), (40, 40, 40)),
])
def test_arrays(array, expected):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (13, 7)
    assert image.getpixel((5, 3)) == expected


def test_exif_orientation_is_applied(tmp_path):
    # 40 x 20, left half red, right half blue, stored with orientation 6 ("rotate 90 clockwise
    # to display"): upright it is 20 x 40 with red on top.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)

    for source in (path, path.read_bytes(), Image.open(path)):
        image = load_image(source)
        assert image.size == (20, 40)
        top, bottom = np.asarray(image)[5, 10].astype(int), np.asarray(image)[35, 10].astype(int)
        assert top[0] > 200 and top[2] < 60, "top must be red"
        assert bottom[2] > 200 and bottom[0] < 60, "bottom must be blue"


def test_file_objects_and_paths_as_strings(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(noise(7, 13)).save(path)
    with path.open("rb") as handle:
        assert load_image(handle).size == (13, 7)
    assert np.array_equal(np.asarray(load_image(str(path))), noise(7, 13))


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
    with pytest.raises(TypeError, match="needs a model"):
        predict(noise(5, 5))
