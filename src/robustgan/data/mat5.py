"""A strict reader for the numeric arrays in a MATLAB level-5 MAT-file, the format of SVHN's
train_32x32.mat and test_32x32.mat (MathWorks, "MAT-File Format", level 5: a 128-byte header,
then tagged data elements, each variable an miMATRIX element, zlib-compressed or not).

Every length and shape is checked against the bytes actually present before an array is
built, so a damaged file raises DataError. scipy.io.loadmat (1.17.1) is not used: one flipped
byte (in the array flags, or in the type of an array's data tag) of a small file crashed the
interpreter with a segmentation fault (tests/test_data.py keeps those bytes as examples)."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from robustgan.errors import DataError

HEADER = 128
MAX_DIMS = 32  # numpy's limit is 64; MATLAB arrays in data files have a handful
UINT32, INT32, MATRIX, COMPRESSED = 6, 5, 14, 15  # data element types: array flags, dimensions, variables
# data element type -> numpy type (MAT-File Format, table "MAT-File Data Types")
STORED = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
# array class -> numpy type, numeric classes only (table "MATLAB Array Types and Classes")
CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
COMPLEX_FLAG = 0x0800  # in the array-flags word, beside the class in its low byte


def read_mat5(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The variables ``names`` that ``path`` holds (absent ones are left out), each a numpy
    array of its MATLAB class, in MATLAB's shape. Other variables are skipped unread."""
    try:
        raw = memoryview(Path(path).read_bytes())  # slices of a view copy nothing
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(raw) < HEADER:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than a MAT-file header")
    if raw[:10] == b"MATLAB 7.3" or raw[512:520] == b"\x89HDF\r\n\x1a\n":
        raise DataError(f"{path}: a MAT-file v7.3 (HDF5); save it as -v7 (level 5), as SVHN distributes it")
    order = {b"IM": "<", b"MI": ">"}.get(bytes(raw[126:128]))
    if order is None or raw[:6] != b"MATLAB":
        raise DataError(f"{path}: not a level-5 MAT-file (no 'MATLAB' header with a byte-order mark)")
    found, pos = {}, HEADER
    while pos < len(raw):
        kind, size, start, _ = _tag(raw, pos, order, path)
        body = raw[start:start + size]
        pos = start + size  # top-level elements are not padded (miMATRIX sizes already are)
        if kind == COMPRESSED:
            kind, body = _inflate(body, order, path)
        if kind != MATRIX:
            continue  # e.g. the subsystem data of a file holding objects
        name, array = _matrix(body, order, path, names)
        if array is not None:
            found[name] = array
    return found


def _tag(buf: memoryview, pos: int, order: str, path) -> tuple[int, int, int, int]:
    """(type, byte count, where its data starts, where the next element starts when elements
    are padded to 8 bytes) of the element at ``pos``: an 8-byte tag, or the small-element form
    (the count in the upper half of the first word, up to 4 bytes of data beside it)."""
    if len(buf) - pos < 8:
        raise DataError(f"{path}: truncated (a data element's tag is cut off)")
    first, size = struct.unpack_from(order + "II", buf, pos)
    if first >> 16:
        kind, size, start, end = first & 0xFFFF, first >> 16, pos + 4, pos + 8
        if size > 4:
            raise DataError(f"{path}: damaged (a small data element of {size} bytes)")
    else:
        kind, start, end = first, pos + 8, pos + 8 + size + (-size % 8)
    if start + size > len(buf):
        raise DataError(f"{path}: truncated (an element of {size} bytes, {len(buf) - start} left)")
    return kind, size, start, end


def _inflate(data: memoryview, order: str, path) -> tuple[int, memoryview]:
    """A compressed element's one inner element: (type, body), inflating only as many bytes as
    its tag declares."""
    stream = zlib.decompressobj()
    try:
        head = stream.decompress(data, 8)
        if len(head) < 8:
            raise DataError(f"{path}: damaged (a compressed element without a tag)")
        kind, size = struct.unpack(order + "II", head)
        body = stream.decompress(stream.unconsumed_tail, size) if size else b""  # max_length 0: no limit
    except zlib.error as err:
        raise DataError(f"{path}: damaged compressed data ({err})") from None
    if len(body) != size:
        raise DataError(f"{path}: truncated compressed data ({len(body)} of {size} bytes)")
    return kind, memoryview(body)


def _matrix(body: memoryview, order: str, path, names) -> tuple[str, np.ndarray | None]:
    """(name, array) of one miMATRIX body: array flags, dimensions, name, real part. The
    array is None when the name is not wanted."""
    parts, pos = [], 0
    while pos < len(body) and len(parts) < 4:
        kind, size, start, pos = _tag(body, pos, order, path)
        parts.append((kind, body[start:start + size]))
    if len(parts) < 3 or parts[0][0] != UINT32 or len(parts[0][1]) != 8 or parts[1][0] != INT32:
        raise DataError(f"{path}: damaged (a variable without array flags and dimensions)")
    flags = struct.unpack(order + "I", parts[0][1][:4])[0]
    name = bytes(parts[2][1]).decode("ascii", "replace")
    if name not in names:
        return name, None
    cls = flags & 0xFF
    if cls not in CLASSES or flags & COMPLEX_FLAG:
        raise DataError(f"{path}: {name} is not a real numeric array (class {cls}, flags {flags >> 8 & 0xFF:#x})")
    dims_raw = parts[1][1]
    if len(dims_raw) % 4 or len(dims_raw) < 8:
        raise DataError(f"{path}: damaged dimensions of {name}")
    if len(dims_raw) > 4 * MAX_DIMS:
        raise DataError(f"{path}: damaged dimensions of {name} ({len(dims_raw) // 4} of them)")
    dims = struct.unpack(f"{order}{len(dims_raw) // 4}i", dims_raw)
    if min(dims) < 0:
        raise DataError(f"{path}: {name} has negative dimensions {dims}")
    if len(parts) < 4 or parts[3][0] not in STORED:
        raise DataError(f"{path}: damaged (no numeric data for {name})")
    kind, data = parts[3]
    stored = np.dtype(order + STORED[kind])
    if not np.can_cast(stored, CLASSES[cls], "safe"):  # MATLAB stores data in a type its class holds exactly
        raise DataError(f"{path}: {name} of class {np.dtype(CLASSES[cls]).name} holds {stored.name} data")
    if len(data) != math.prod(dims) * stored.itemsize:
        raise DataError(f"{path}: {name} has {len(data)} bytes of data for shape {dims} of {stored.name}")
    return name, np.frombuffer(data, stored).reshape(dims, order="F").astype(CLASSES[cls], copy=False)
