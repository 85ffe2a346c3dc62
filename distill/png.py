"""A PNG writer for 8-bit RGB images: one filter for every row, zlib's run-length strategy.

Why not PIL or torchvision: both try the five PNG filters on every row (adaptive filtering) and
then deflate; on a distilled set's 224 px photo tilings that is 3.5-3.7 ms per image at zlib
level 1 (PIL with Z_RLE, torchvision's libpng alike), which at 1000 classes x IPC 10 was a
third of `materialize`'s time. The "Up" filter on every row (each byte minus the byte above)
with zlib level 1 and Z_RLE takes 1.1 ms for files 3 % larger (measured on 30 of those
tilings, 2-core AMD EPYC: 1.14 ms / 82 KB against PIL's 3.73 ms / 80 KB). The format is the
plain PNG of the specification (signature, IHDR, one IDAT, IEND, each chunk with its CRC);
every reader decodes it to the same pixels (tests/test_png.py checks PIL's and torchvision's
decoders against the array written).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_rgb(pixels: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array."""
    a = np.ascontiguousarray(pixels)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or 0 in a.shape[:2]:
        raise ValueError(f"encode_rgb takes a non-empty (H, W, 3) uint8 array, not {a.shape}")
    h, w, _ = a.shape
    rows = a.reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG defines it
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    idat = z.compress(filtered.tobytes()) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def save_rgb(image, path: str | Path) -> None:
    """Write a PIL RGB image (or an (H, W, 3) uint8 array) as PNG at ``path``."""
    Path(path).write_bytes(encode_rgb(np.asarray(image, dtype=np.uint8)))
