"""Decoding any image a dataset may hold into 8-bit RGB, and the pipeline's resize.

Real folders hold CMYK JPEGs, 16-bit PNGs, palettes with transparency, truncated files,
phone photos stored sideways with an EXIF orientation tag, and the odd 400-megapixel scan.
Everything convertible becomes RGB here, in the frame a viewer shows (the orientation applied;
sizes read from headers are reported in that frame too, so boxes match what a person sees);
everything else raises `UnreadableImage` with a reason, which the data layer records in
`skipped.csv` instead of dropping silently or ending the run.

`DECODE_RULES` names these rules; the bank hashes it, so a change of decoding is a new bank.

Two decoders turn a file into the pipeline's resized pixels (``data.decoder``):

- ``pil`` (the default): the whole file decoded by PIL, then one antialiased bicubic resize.
- ``fast``: for JPEGs, libjpeg's DCT scaling (PIL's ``draft``) when the file is at least
  twice the target size, else torchvision's ``decode_jpeg`` and an antialiased bicubic tensor
  resize; the same EXIF rule; every other format, and any JPEG the fast path cannot read
  whole, goes the ``pil`` way. Its pixels differ from ``pil``'s by rounding-level amounts
  (tested), so the decoder is part of the bank's hash whenever it is not ``pil``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)


# Hashed into every bank (distill.scoring.stage.score_spec): scores made under other decoding
# rules (e.g. before EXIF orientation was applied) are not the same bank.
DECODE_RULES = {"exif_orientation": "applied", "alpha": "over white", "frames": "first"}

# EXIF orientation tag -> the transpose that shows the image as a viewer does.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)


class UnreadableImage(Exception):
    """An image file that cannot be turned into pixels; the message says why."""


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened, not yet decoded image; 1 when absent.

    Read from the header only, so the scan stays cheap, and the same way for `read_size`
    and `load_rgb` (a size and a decode that disagreed would misplace every box). A PNG's
    eXIf chunk counts only when it precedes the pixel data (PIL would decode the whole file
    to find a later one).
    """
    try:
        if im.format == "PNG":
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        value = int(exif.get(0x0112, 1))
    except Exception:  # a damaged EXIF block: show the pixels as stored
        return 1
    return value if value in _ORIENT else 1


def _pixel_limit_reason(w: int, h: int, max_pixels: int | None) -> str | None:
    if max_pixels and w * h > max_pixels:
        return (
            f"too large ({w}x{h} = {w * h / 1e6:.0f} megapixels; "
            f"data.max_pixels={int(max_pixels):,})"
        )
    return None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header alone.

    An image above ``max_pixels`` (or above PIL's decompression-bomb guard) raises
    `UnreadableImage` naming its size: one huge file is skipped, never the end of a run.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with Image.open(path) as im:
            w, h = im.size
            if orientation(im) in _SWAPS_AXES:
                w, h = h, w
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"too large for PIL's decompression-bomb guard: {e}") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UnreadableImage(f"cannot read header: {e}") from None
    reason = _pixel_limit_reason(w, h, max_pixels)
    if reason:
        raise UnreadableImage(reason)
    return w, h


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparency is composited over ``background`` rather than dropped: the colour under a
    transparent pixel is arbitrary (often black) and would otherwise leak into the patch.
    16-bit and 32-bit integer images are rescaled by their type's range, not clipped.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16)
        return Image.fromarray((arr >> 8).astype(np.uint8), "L").convert("RGB")
    if mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        hi = 65535 if arr.max(initial=0) > 255 else 255
        arr = np.clip(arr, 0, hi) * (255.0 / hi)
        return Image.fromarray(np.round(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = np.nan_to_num((arr - lo) * scale)
        return Image.fromarray(np.round(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, L, 1, P without transparency: PIL knows the conversion.
    return im.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode a whole file into RGB, raising `UnreadableImage` for anything broken.

    Truncated files are errors here (PIL's LOAD_TRUNCATED_IMAGES stays off): a half-grey
    image would be scored as if it were real. The EXIF orientation is applied (see
    `orientation`), so the pixels are those a viewer shows and match `read_size`.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with Image.open(path) as im:
            turn = _ORIENT.get(orientation(im))
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            rgb = to_rgb(im)
            return rgb.transpose(turn) if turn is not None else rgb.copy()
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not a recognised image format") from None
    except FileNotFoundError:
        raise UnreadableImage("file disappeared") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot decode: {e}") from None


def resized_size(width: int, height: int, short_edge: int, multiple: int = 1) -> tuple[int, int]:
    """Size after scaling the short edge to ``short_edge`` with the aspect ratio kept.

    The long edge is rounded to a multiple of ``multiple`` (the VAE's downsampling factor) so
    the latent grid is whole; the aspect error this introduces is below ``multiple / long``
    (1% at 256x341 with f=8), and box mapping uses the exact per-axis scales.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"bad image size {width}x{height}")
    if short_edge % multiple:
        raise ValueError(f"short_edge={short_edge} must be a multiple of {multiple}")
    if width <= height:
        long = max(
            multiple, int(math.floor(height * short_edge / width / multiple + 0.5)) * multiple
        )
        return short_edge, long
    long = max(multiple, int(math.floor(width * short_edge / height / multiple + 0.5)) * multiple)
    return long, short_edge


def resize_rgb(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to ``size`` (width, height) with antialiased bicubic filtering."""
    if im.size == tuple(size):
        return im
    return im.resize(tuple(size), Image.Resampling.BICUBIC, reducing_gap=None)


DECODERS = ("pil", "fast")


def decode_rules(decoder: str = "pil") -> dict:
    """What a bank hashes about decoding: `DECODE_RULES`, and the decoder unless ``pil``
    (banks made before the choice existed keep their hash)."""
    check_decoder(decoder)
    return dict(DECODE_RULES) if decoder == "pil" else {**DECODE_RULES, "decoder": decoder}


def bank_decoder(spec: dict) -> str:
    """The decoder a bank's pixels were made with (Stage II must reload them the same way)."""
    return str(spec.get("decode", {}).get("decoder", "pil"))


def check_decoder(name: str) -> str:
    if name not in DECODERS:
        from distill.errors import ConfigError

        raise ConfigError(f"data.decoder={name!r} is not one of {list(DECODERS)}")
    return name


def load_resized(path: str | Path, size_of, decoder: str = "pil") -> tuple[np.ndarray, tuple]:
    """Pixels (H, W, 3) uint8 of the file resized to ``size_of((w, h))``, and (w, h) as shown.

    ``size_of`` maps the displayed original size to the target (width, height); the ``fast``
    decoder needs the target before decoding (module docstring). Raises `UnreadableImage`.
    """
    if decoder == "fast":
        fast = _load_resized_fast(Path(path), size_of)
        if fast is not None:
            return fast
    im = load_rgb(path)
    return np.asarray(resize_rgb(im, size_of(im.size)), dtype=np.uint8), im.size


_JPEG_EOI = b"\xff\xd9"


def _drafted_rgb(im: Image.Image, request: tuple[int, int], turn: int) -> Image.Image:
    """An open JPEG decoded at the smallest DCT scale still at least ``request`` (stored
    orientation), as RGB, EXIF turn ``turn`` applied. May be ``im`` itself: copy it before
    the file is closed."""
    im.draft("RGB", request)
    im.load()
    rgb = to_rgb(im)
    t = _ORIENT.get(turn)
    return rgb.transpose(t) if t is not None else rgb


def load_reduced(path: str | Path, shrink: float) -> tuple[Image.Image, tuple[int, int]] | None:
    """The ``fast`` decoder's reading of a file that is only needed ``shrink`` times smaller:
    a JPEG decoded by libjpeg at 1/2, 1/4 or 1/8 scale, never below 1/``shrink`` per side
    (PIL ``draft``), EXIF orientation applied. Returns the image and the size it has as
    shown at full scale (its boxes' frame); None when the file takes the exact path instead
    (not a JPEG, another mode, under 2x to spare, or unreadable: `load_rgb` then decodes it
    or raises its `UnreadableImage`). A truncated JPEG is refused here as there."""
    if shrink < 2:
        return None
    try:
        with Image.open(path) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            turn = orientation(im)
            w, h = im.size
            rgb = _drafted_rgb(im, (math.ceil(w / shrink), math.ceil(h / shrink)), turn)
            return (rgb.copy() if rgb is im else rgb), ((h, w) if turn in _SWAPS_AXES else (w, h))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _load_resized_fast(path: Path, size_of) -> tuple[np.ndarray, tuple] | None:
    """The fast path for a whole, readable JPEG; None sends the file down the PIL path."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            turn = orientation(im)
            w, h = im.size
            shown = (h, w) if turn in _SWAPS_AXES else (w, h)
            tw, th = size_of(shown)
            stored_target = (th, tw) if turn in _SWAPS_AXES else (tw, th)
            if w >= 2 * stored_target[0] and h >= 2 * stored_target[1]:
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the target size.
                rgb = _drafted_rgb(im, stored_target, turn)
                return np.asarray(resize_rgb(rgb, (tw, th)), dtype=np.uint8), shown
        data = path.read_bytes()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the PIL path raises the proper UnreadableImage
    # libjpeg-turbo decodes a truncated file with a warning only: a JPEG must end with its
    # end-of-image marker to take this path (PIL then refuses the truncated file).
    if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        return None
    import torch
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        x = decode_jpeg(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB,
            apply_exif_orientation=False,
        )
    except RuntimeError:
        return None
    x = _orient_tensor(x, turn)
    if tuple(x.shape[1:]) != (shown[1], shown[0]):
        return None
    if (tw, th) != shown:
        x = TF.resize(x, [th, tw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return x.permute(1, 2, 0).contiguous().numpy(), shown


# `_ORIENT`'s transposes on a (C, H, W) tensor (checked against PIL's in the tests).
_ORIENT_TENSOR = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-1).flip(-2),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.rot90(-1, dims=(-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-1).flip(-2),
    8: lambda x: x.rot90(1, dims=(-2, -1)),
}


def _orient_tensor(x, turn: int):
    f = _ORIENT_TENSOR.get(turn)
    return f(x) if f is not None else x
