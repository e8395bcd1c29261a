"""Image loading at the trust boundary (bad inputs, colour modes, EXIF), on generated images."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import refinenet
from refinenet.images import ImageLoadError, load_image


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


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((5, 5, 2), dtype=np.uint8), r"shape \(5, 5, 2\)"),
        (np.zeros((3, 20, 30), dtype=np.uint8), "channels first"),
        (np.zeros((2, 5, 5, 3), dtype=np.uint8), "expected H x W"),
        (np.full((4, 4, 3), 2.0), r"values in \[2, 2\].*\[0, 1\]"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.full((4, 4), -3, dtype=np.int32), "expected 0..255"),
        (np.zeros((4, 4), dtype=np.complex64), "dtype complex64"),
    ],
)
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


@pytest.mark.parametrize(
    ("name", "source", "mode", "first", "second"), _mode_cases(), ids=[case[0] for case in _mode_cases()]
)
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


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((7, 13), 200, dtype=np.uint8), (200, 200, 200)),
        (np.full((7, 13, 1), 200, dtype=np.uint8), (200, 200, 200)),
        (np.full((7, 13, 3), [10, 20, 30], dtype=np.uint8), (10, 20, 30)),
        (np.full((7, 13, 3), [0.0, 0.5, 1.0], dtype=np.float32), (0, 128, 255)),
        (np.full((7, 13, 4), [10, 20, 30, 0], dtype=np.uint8), (255, 255, 255)),
        (np.full((7, 13, 4), [10, 20, 30, 255], dtype=np.uint8), (10, 20, 30)),
        (np.ones((7, 13), dtype=bool), (255, 255, 255)),
        (np.full((7, 13), 257 * 40, dtype=np.uint16), (40, 40, 40)),
    ],
)
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


def test_the_package_exports_the_loader():
    assert refinenet.load_image is load_image and refinenet.ImageLoadError is ImageLoadError
