"""Untrusted images in, plain RGB images out: the trust boundary of the package.

:func:`load_image` turns whatever a user hands over (a path, uploaded bytes, a file object, a
PIL image, a numpy array) into an upright RGB PIL image, or raises an :class:`ImageLoadError`
whose message says what is wrong in plain words. Every failure of the decoders, whatever its
type, becomes that one error, so callers (the app, the CLI) can show it as it is.

``max_pixels`` is a hard limit on the pixel count *declared in the file header*, checked before
any pixel is decoded, so a decompression bomb (a tiny file that claims to be 50000 x 50000) is
refused instead of exhausting memory.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 120 M pixels admits the largest phone-camera photos (108 MP, 12000 x 9000) and refuses
# decompression bombs; an accepted image of that size takes about 0.3 GB as RGB.
DEFAULT_MAX_PIXELS = 120_000_000

# Transparent pixels are composited on white: that is how a transparent PNG looks on a web page
# or in an image viewer, which is what the user expects to be segmented. Dropping the alpha
# channel instead would expose whatever colour happens to be stored under transparent pixels
# (often black, sometimes garbage).
TRANSPARENT_BACKGROUND = (255, 255, 255)

ImageSource = str | Path | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An input could not be turned into an RGB image; the message says why, in plain words."""


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load ``source`` as an RGB PIL image at its original size, upright.

    ``source`` may be a file path, the bytes of an image file (or a binary file object), a PIL
    image, or a numpy array (``H x W``, ``H x W x 1``, ``H x W x 3`` or ``H x W x 4``; ``uint8``,
    ``uint16``, ``bool``, or floats in [0, 1]).

    - The EXIF orientation tag is applied (phone photos are stored sideways plus a tag).
    - Colour modes: grey (``1``, ``L``), palette (``P``), CMYK and YCbCr are converted to RGB;
      transparency (``LA``, ``PA``, ``RGBA``, ``P`` with a transparent colour) is composited on
      white (see ``TRANSPARENT_BACKGROUND``); 16-bit grey (``I;16``, e.g. 16-bit PNG) is scaled
      to 8 bits by the full 16-bit range (``/ 257``) so that brightness is preserved; 32-bit
      integer (``I``) and float (``F``) images are kept as they are when their values already
      lie in 0..255 (or 0..1 for floats), otherwise stretched from their own minimum..maximum.
    - Multi-frame files (GIF, TIFF) give their first frame.
    - The pixel count declared by the header is checked against ``max_pixels`` before decoding.

    Raises :class:`ImageLoadError` for a missing, empty, unreadable, truncated, zero-sized or
    too large image. Pillow's own decompression-bomb limit (about 179 M pixels) still applies
    on top of ``max_pixels``.
    """
    if isinstance(source, Image.Image):
        _check_size(source.size, "the image", max_pixels)
        _load_pixels(source, "the image")  # an image from Image.open() may not be decoded yet
        return _finish(source, "the image", max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, str | Path):
        return _from_path(Path(source), max_pixels)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise ImageLoadError("the uploaded data is empty (0 bytes): there is no image in it")
        return _decode(io.BytesIO(data), "the uploaded data", max_pixels)
    if hasattr(source, "read"):
        return load_image(source.read(), max_pixels)
    raise ImageLoadError(
        f"cannot load an image from a {type(source).__name__}; pass a file path, bytes, a PIL image or a numpy array"
    )


def _from_path(path: Path, max_pixels: int) -> Image.Image:
    name = f"'{path}'"
    if not path.exists():
        raise ImageLoadError(f"{name}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{name} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{name} is empty (0 bytes): there is no image in it")
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ImageLoadError(f"{name} cannot be opened: {error.strerror or error}") from error
    with handle:
        return _decode(handle, name, max_pixels)


def _decode(stream: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """Open (header only), check the declared size, then decode. Pillow raises many exception
    types for damaged files (OSError, SyntaxError, ValueError, struct.error, EOFError, ...); at
    this trust boundary every one of them becomes an :class:`ImageLoadError`."""
    with warnings.catch_warnings():
        # Our own max_pixels check below is the policy; Pillow's warning would only duplicate it.
        # (catch_warnings is process-wide before Python 3.14: at worst a concurrent thread's
        # warning filter changes made during this block are undone, which is harmless here.)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as error:
            raise ImageLoadError(
                f"{name} declares an image of more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels; "
                "refusing to decode it (decompression-bomb protection)"
            ) from error
        except UnidentifiedImageError as error:
            raise ImageLoadError(
                f"{name} is not an image file that can be read (unknown format, or a damaged header); "
                "use a PNG, JPEG, WebP, BMP, GIF or TIFF image"
            ) from error
        except Exception as error:  # see the docstring
            raise ImageLoadError(f"{name} is a damaged image file: its header could not be read ({error})") from error
        _check_size(image.size, name, max_pixels)
        _load_pixels(image, name)
    return _finish(image, name, max_pixels)


def _load_pixels(image: Image.Image, name: str) -> None:
    """Decode the pixels; every decoder failure becomes an :class:`ImageLoadError`."""
    try:
        image.load()
    except MemoryError as error:
        raise ImageLoadError(f"{name} is too large to decode in the available memory") from error
    except Exception as error:  # see _decode
        raise ImageLoadError(f"{name} is truncated or corrupt; its pixels could not be decoded ({error})") from error


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{name} has no pixels (its size is {width} x {height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name} is too large: {width} x {height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,}; downscale it first"
        )


def _finish(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Size check, EXIF orientation, then conversion to RGB."""
    _check_size(image.size, name, max_pixels)
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block must not make a readable image unusable
        upright = image.copy()
    if upright is None:  # only with in_place=True; kept for type checkers
        upright = image
    return _to_rgb(upright, name)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.readonly else image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_to_rgb(image, name)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageLoadError(f"{name} uses the colour mode {mode!r}, which cannot be converted to RGB") from error


def _wide_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """16-bit, 32-bit integer and float grey images to 8-bit RGB (policy in :func:`load_image`)."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        grey = _scale_16bit(values.astype(np.float64))
    else:
        grey = _scale_wide(values.astype(np.float64), image.mode == "F", name)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)


def _scale_wide(values: np.ndarray, is_float: bool, name: str) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageLoadError(f"{name} holds no finite pixel values")
    values = np.where(finite, values, 0.0)
    low, high = float(values.min()), float(values.max())
    if is_float and low >= 0.0 and high <= 1.0:
        values = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        pass
    elif not is_float and low >= 0.0 and high <= 65535.0:
        return _scale_16bit(values)
    else:
        values = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    name = "the array"
    shape = array.shape
    if array.ndim == 3 and shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        hint = " (channels first? use H x W x C)" if len(shape) == 3 and shape[0] in (1, 3, 4) else ""
        raise ImageLoadError(f"{name} has shape {shape}; expected H x W, H x W x 1, H x W x 3 or H x W x 4{hint}")
    _check_size((array.shape[1], array.shape[0]), name, max_pixels)
    array = _array_to_uint8(array, name)
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.shape[-1] == 3:
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array), mode="RGBA"), name)


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _scale_16bit(array.astype(np.float64))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(f"{name} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(
                f"{name} is a float array with values in [{low:g}, {high:g}]; float images must lie in "
                "[0, 1] (divide 0..255 data by 255, or pass uint8)"
            )
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageLoadError(
                f"{name} is an integer array with values in [{low}, {high}]; expected 0..255 (or use uint16)"
            )
        return array.astype(np.uint8)
    raise ImageLoadError(f"{name} has dtype {array.dtype}; expected uint8, uint16, bool or float in [0, 1]")


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "TRANSPARENT_BACKGROUND",
    "ImageLoadError",
    "ImageSource",
    "load_image",
]
