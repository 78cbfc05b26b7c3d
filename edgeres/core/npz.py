"""``.npz`` calibration and validation data: ``x`` (N,H,W[,C] real-number pixels), optionally ``y`` (N,).

LIGHT layer: numpy only.  The .npy headers inside the archive are checked before anything is loaded
(dtype, layout, size, a header that lies about its size), nothing is ever unpickled, and loaded pixels
are checked for NaN/Inf.  Every problem is one DataError naming the file.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgeres.core.errors import DataError, first_line
from edgeres.core.machine import physical_memory

MAX_IMAGE_ELEMENTS = 2**28  # values in one image; more is refused
_KINDS = {"c": "complex numbers", "U": "strings", "S": "byte strings", "V": "structured records", "M": "dates",
          "m": "time spans"}


MAX_CLASS_NAMES, MAX_NAME_CHARS = 100_000, 256


def load_npz(path: Path, role: str) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """``x``, ``y`` (int64 labels, or None) and ``class_names`` (or None), after checking their headers:
    nothing huge, mislabelled or pickled is ever loaded, and NaN/Inf pixels are refused.

    ``class_names``, optional, is a 1-D array of strings (``numpy.str_``, stored without pickling): label
    ``i`` is ``class_names[i]``.  The bundle's labels.txt comes from it."""
    where = f"{role} file {path}"
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise DataError(f"{where} is a single .npy array, not an .npz archive; "
                                f"save it with numpy.savez(path, x=..., y=...)")
        with np.load(path, allow_pickle=False) as z:  # not a zip (nor .npy): refused as a pickle
            if "x" not in z.files:
                raise DataError(f"{where} has no 'x' array (found: {', '.join(z.files) or 'nothing'})")
            _check_npz(_npz_header(z, "x", where), _npz_header(z, "y", where) if "y" in z.files else None, where)
            x, y = z["x"], (z["y"] if "y" in z.files else None)
            names = _class_names(z, where) if "class_names" in z.files else None
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError, zlib.error,
            struct.error, MemoryError) as exc:  # a damaged zip or .npy header, or too big to load
        raise DataError(f"{where} is not a readable .npz: {first_line(exc)}") from None
    if x.dtype.kind == "f":  # bool and integer pixels are always finite in float32
        _check_finite(x, where)
    if y is not None:
        y = y.reshape(-1)
        if len(y) and (y.min() < 0 or y.max() > np.iinfo(np.int64).max):
            raise DataError(f"{where}: 'y' must hold non-negative integer labels, found {int(y.min())}.."
                            f"{int(y.max())}")
        y = y.astype(np.int64)
        if names is not None and len(y) and y.max() >= len(names):
            raise DataError(f"{where}: 'y' has label {int(y.max())} but 'class_names' names only {len(names)} "
                            "classes")
    return x, y, names


def _class_names(z, where: str) -> tuple[str, ...]:
    shape, dtype, _ = _npz_header(z, "class_names", where)
    if dtype.kind != "U" or len(shape) != 1 or not 0 < shape[0] <= MAX_CLASS_NAMES \
            or dtype.itemsize // 4 > MAX_NAME_CHARS:
        raise DataError(f"{where}: 'class_names' must be a 1-D array of 1 to {MAX_CLASS_NAMES:,} strings of at "
                        f"most {MAX_NAME_CHARS} characters, got shape {shape} of {dtype}")
    names = tuple(str(v) for v in z["class_names"])
    bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
    if bad or len(set(names)) != len(names):
        raise DataError(f"{where}: 'class_names' must be distinct, non-blank, one-line names"
                        + (f" (found {bad[0]!r})" if bad else " (found a repeated name)"))
    return names


def _npz_header(z, key: str, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and stored data bytes of member ``key``, from its .npy header alone."""
    name = key if key in z.zip.namelist() else f"{key}.npy"  # as NpzFile resolves a key
    with z.zip.open(name) as f:
        try:
            major = np.lib.format.read_magic(f)[0]
        except ValueError:
            raise DataError(f"{where}: '{key}' is not a numpy array; save it with numpy.savez") from None
        # Format 3.0 differs from 2.0 only in allowing utf-8 field names, refused anyway.
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if major == 1 else
                           np.lib.format.read_array_header_2_0)(f)
        stored = z.zip.getinfo(name).file_size - f.tell()
    if dtype.hasobject:
        raise DataError(f"{where} is not a readable .npz: '{key}' holds Python objects (dtype {dtype}), which "
                        f"edgeres never unpickles; save numeric arrays")
    return tuple(int(d) for d in shape), dtype, stored


def _check_npz(x: tuple, y: tuple | None, where: str) -> None:
    """Refuse, from their headers, an ``x`` that is not N real-number images and a ``y`` not N int labels."""
    (xs, xt, _), n = x, math.prod(x[0][1:])
    if xt.kind not in "biuf" or xt.fields is not None or xt.subdtype is not None:
        raise DataError(f"{where}: 'x' holds {_KINDS.get(xt.kind, 'non-numbers')} (dtype {xt}); pixels must be "
                        "real numbers (bool, integer or float)")
    if len(xs) not in (3, 4) or xs[0] == 0:
        raise DataError(f"{where}: 'x' must be a non-empty (N,H,W[,C]) array, got {xs}")
    if not 0 < n <= MAX_IMAGE_ELEMENTS:
        raise DataError(f"{where}: 'x' images are {'x'.join(map(str, xs[1:]))}, {n:,} values each; edgeres "
                        f"reads 1 to {MAX_IMAGE_ELEMENTS:,}")
    if y is not None:
        (ys, yt, _) = y
        if yt.kind not in "iu" or yt.fields is not None or yt.subdtype is not None:
            raise DataError(f"{where}: 'y' must hold non-negative integer labels, got dtype {yt}")
        if len(ys) not in (1, 2) or ys[1:] not in ((), (1,)):
            hint = " (one-hot? save y.argmax(axis=1))" if len(ys) == 2 else ""
            raise DataError(f"{where}: 'y' must be (N,) integer labels, got shape {ys}{hint}")
        if ys[0] != xs[0]:
            raise DataError(f"{where}: 'y' has {ys[0]} labels for {xs[0]} images")
    for key, (shape, dtype, stored) in (("x", x), ("y", y)) if y else (("x", x),):
        if stored != math.prod(shape) * dtype.itemsize:  # a header that lies: refused before numpy allocates
            raise DataError(f"{where} is not a readable .npz: '{key}' claims shape {shape} of {dtype} "
                            f"({math.prod(shape) * dtype.itemsize:,} bytes) but holds {stored:,} bytes")
    if (memory := physical_memory()) and math.prod(xs) * xt.itemsize > memory:
        raise DataError(f"{where}: 'x' is {math.prod(xs) * xt.itemsize / 2**30:.1f} GiB, more than this "
                        f"machine's {memory / 2**30:.1f} GiB of memory; split it, or use an image folder")


def _check_finite(x: np.ndarray, where: str, step: int = 2**24) -> None:
    """DataError counting the pixel values that are NaN, Inf or beyond float32, checked ``step`` at a time."""
    bad = nan = 0
    for i in range(0, len(x), rows := max(1, step // math.prod(x.shape[1:]))):
        with np.errstate(over="ignore"):
            bad += int(np.count_nonzero(~np.isfinite(x[i:i + rows].astype(np.float32))))
        nan += int(np.count_nonzero(np.isnan(x[i:i + rows])))
    if bad:
        raise DataError(f"{where}: 'x' has {bad:,} pixel values that are not finite in float32 ({nan:,} NaN, "
                        f"{bad - nan:,} Inf or beyond float32's range); fix or drop those images")

