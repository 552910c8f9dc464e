"""Hostile data files and folders, tiny on disk, that would exhaust memory or never finish if read naively
(shared by ``tests/data`` and ``tests/trust``). Nothing here runs until a test builds it in a temp dir."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

#: Bytes of zeros deflated at a time by :func:`write_npz_bomb` (one block, repeated).
_BLOCK = 2**26


def write_expanded_pt(path: Path, n: int = 60_000_000) -> Path:
    """A ``.pt`` of stride-0 views (about 2 KB on disk): ``x`` ``(n, 1, 8, 8)`` float32 and ``y`` ``(n,)`` int64,
    each one stored value expanded ``n`` times (``n = 6e7``: 15 GiB of values once copied)."""
    torch.save({"x": torch.zeros(1, 1, 8, 8).expand(n, 1, 8, 8),
                "y": torch.zeros(1, dtype=torch.int64).expand(n)}, path)
    return path


def _deflated(header: bytes, zeros: int) -> tuple[bytes, int]:
    """Raw deflate of ``header`` then ``zeros`` zero bytes, and the CRC-32 of those bytes.

    Blocks of zeros are compressed after a full flush, so one compressed block repeated stands for all."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(header)
    full, rest = divmod(zeros, _BLOCK)
    if full:
        block = bytes(_BLOCK)
        parts.append((deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)) * full)
        for _ in range(full):
            crc = zlib.crc32(block, crc)
    parts.append(deflate.compress(bytes(rest)) + deflate.flush())
    return b"".join(parts), zlib.crc32(bytes(rest), crc)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_npz_bomb(path: Path, n: int = 40 * 2**20) -> Path:
    """A valid ``.npz`` deflate bomb (about 2.5 MB on disk): ``x`` ``(n, 1, 8, 8)`` uint8 zeros and ``y`` ``(n,)``
    uint8 zeros, as ``np.savez_compressed`` would write them (``n = 40 * 2**20``: 2.5 GiB of ``x``).

    The zip is written by hand: compressing the zeros for real would take seconds per GiB."""
    members = {"x.npy": ((n, 1, 8, 8), n * 64), "y.npy": ((n,), n)}
    local, central = io.BytesIO(), io.BytesIO()
    for name, (shape, size) in members.items():
        header = _npy_header(shape, np.dtype(np.uint8))
        body, crc = _deflated(header, size)
        total = len(header) + size
        offset = local.tell()
        fields = (20, 0, 8, 0, 0x21, crc, len(body), total, len(name), 0)
        local.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name.encode() + body)
        central.write(struct.pack("<IH", 0x02014B50, 20) + struct.pack("<HHHHHIIIHH", *fields)
                      + struct.pack("<HHHII", 0, 0, 0, 0, offset) + name.encode())
    directory = central.getvalue()
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), local.tell(), 0)
    path.write_bytes(local.getvalue() + directory + end)
    return path


def write_symlink_loop(root: Path) -> Path:
    """An image folder whose ``train/a`` holds links back to itself and its parent (``l1 -> .``,
    ``l2 -> ..``): a walk that follows them never ends. Two classes with one PNG each."""
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        _write_png(root / "train" / name / "0.png")
    os.symlink(".", root / "train" / "a" / "l1")
    os.symlink("..", root / "train" / "a" / "l2")
    return root


def write_symlink_escape(root: Path, outside: Path) -> Path:
    """An image folder whose class ``b`` is a symlink to ``outside`` (a folder of one PNG outside ``root``)."""
    (root / "train" / "a").mkdir(parents=True)
    _write_png(root / "train" / "a" / "0.png")
    outside.mkdir(parents=True, exist_ok=True)
    _write_png(outside / "0.png")
    os.symlink(outside, root / "train" / "b")
    return root


def _write_png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").save(path)
