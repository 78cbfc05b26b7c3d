"""Calibration and validation data: image folders and ``.npz`` files.

LIGHT layer: numpy and Pillow only, never TensorFlow.

Two folder layouts are understood:

* class subfolders (``DIR/<class>/<image>``): sorted folder names give labels;
* a flat folder of images: no labels, enough for calibration.

An ``.npz`` file holds ``x`` (N,H,W[,C] pixels) and optionally ``y`` (N,): see :mod:`edgeres.core.npz`.

Images are decoded lazily and streamed in batches, so a 50,000-image validation
set is never held in memory at once.  Decoding handles grayscale, palette,
RGBA, odd sizes and EXIF orientation, then resizes to the model input.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeres.core.errors import DataError, ShapeError, UsageError, first_line
from edgeres.core.npz import MAX_IMAGE_ELEMENTS, load_npz
from edgeres.core.preprocess import Preprocess
from edgeres.core.quiet import quiet

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
MAX_BATCH_ELEMENTS = MAX_IMAGE_ELEMENTS  # float32 values per batch (1 GiB): big inputs get smaller batches
@dataclass(frozen=True)
class Dataset:
    """A lazily decoded, optionally labelled list of images.

    ``items`` are file paths (folders) or row indices (npz).  Sampling returns a
    new Dataset; nothing is decoded until :meth:`batches` is iterated.
    """

    source: str
    layout: str  # "classes" | "flat" | "npz"
    items: tuple
    labels: np.ndarray | None = field(default=None, compare=False)
    class_names: tuple[str, ...] | None = None
    _npz_x: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is not None and len(self.labels):
            return int(self.labels.max()) + 1
        return None

    def sample(self, n: int | None, seed: int = 0) -> Dataset:
        """A deterministic sample of ``n`` items (all of them, shuffled, when n is None)."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0):
            raise UsageError(f"sample size must be a positive whole number, got {n!r}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.items))
        if n is not None:
            order = np.sort(order[:n])
        return self._subset(order)

    def split(self, n_first: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Two disjoint deterministic parts: ``n_first`` items and the rest."""
        order = np.random.default_rng(seed).permutation(len(self.items))
        return self._subset(np.sort(order[:n_first])), self._subset(np.sort(order[n_first:]))

    def rest(self, taken: Dataset, n: int | None = None, seed: int = 0) -> Dataset:
        """The items not in ``taken`` (a sample of this dataset): all of them, or a deterministic ``n``."""
        used = set(taken.items)
        idx = np.asarray([i for i, item in enumerate(self.items) if item not in used], dtype=np.int64)
        if n is not None and len(idx) > n:
            idx = np.sort(np.random.default_rng(seed).permutation(idx)[:n])
        return self._subset(idx)

    def shared_with(self, other: Dataset) -> int:
        """How many of this dataset's images are also ``other``'s: the same files, or the same rows of one .npz."""
        if self.layout == "npz" or other.layout == "npz":
            same = self.layout == other.layout and os.path.realpath(self.source) == os.path.realpath(other.source)
            return len(set(self.items) & set(other.items)) if same else 0
        theirs = {os.path.realpath(item) for item in other.items}
        return sum(os.path.realpath(item) in theirs for item in self.items)

    def _subset(self, idx: np.ndarray) -> Dataset:
        items = tuple(self.items[i] for i in idx)
        labels = None if self.labels is None else self.labels[idx]
        return replace(self, items=items, labels=labels)

    def shard(self, start: int, stop: int) -> Shard:
        """Items ``start:stop``, described so that another process or machine can open them again."""
        items = self.items[start:stop]
        if self.layout != "npz":
            items = tuple(os.path.abspath(item) for item in items)
        return Shard(os.path.abspath(self.source), self.layout, items,
                     None if self.labels is None else self.labels[start:stop], self.class_names,
                     len(self._npz_x) if self._npz_x is not None else None)

    def describe(self) -> dict:
        return {"source": self.source, "layout": self.layout, "count": len(self),
                "labelled": self.labelled, "classes": list(self.class_names or []) or self.num_classes}

    def check_classes(self, model_outputs: int, role: str) -> None:
        """Raise ShapeError when the labels cannot belong to a model with this many outputs."""
        if not self.labelled:
            return
        if self.class_names is not None and len(self.class_names) != model_outputs:
            raise ShapeError(
                f"{role} data {self.source} has {len(self.class_names)} classes but the model "
                f"outputs {model_outputs}")
        if self.labels is not None and len(self.labels) and int(self.labels.max()) >= model_outputs:
            raise ShapeError(
                f"{role} data {self.source} has label {int(self.labels.max())} but the model "
                f"outputs only {model_outputs} classes")

    def batches(self, hwc: Sequence[int], batch_size: int, preprocess: Preprocess, on_error: str = "warn", *,
                skipped: list[str] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(x, y)`` float32 NHWC batches; y is None for unlabelled data.

        Unreadable images are skipped with a warning (``on_error='warn'``) or
        raise DataError (``'error'``).  A dataset in which no image could be
        read raises DataError.  Given a ``skipped`` list, the messages of the
        skipped images go into it instead, and a part of a dataset with no
        readable image is no error here: the caller, which sees the whole,
        judges (:func:`judge_skipped`).
        """
        batch_size = effective_batch_size(hwc, batch_size)
        h, w, c = _check_hwc(hwc)
        xs: list[np.ndarray] = []
        ys: list[int] = []
        yielded = 0
        collect, skipped = skipped is not None, skipped if skipped is not None else []
        for i, item in enumerate(self.items):
            try:
                pixels = self._pixels(item, h, w, c, preprocess.resize)
            except DataError as exc:
                if on_error == "error":
                    raise
                skipped.append(str(exc))
                continue
            xs.append(pixels)
            if self.labels is not None:
                ys.append(int(self.labels[i]))
            if len(xs) == batch_size:
                yielded += len(xs)
                yield self._emit(xs, ys, preprocess)
                xs, ys = [], []
        if xs:
            yielded += len(xs)
            yield self._emit(xs, ys, preprocess)
        if not collect:
            judge_skipped(self.source, len(self.items), yielded, skipped)

    def _emit(self, xs, ys, preprocess):
        y = np.asarray(ys, np.int64) if self.labels is not None else None
        return preprocessed(preprocess, np.stack(xs), f"{self.source}: "), y

    def _pixels(self, item, h: int, w: int, c: int, resize: str) -> np.ndarray:
        if self._npz_x is not None:
            return _fit_array(self._npz_x[item], h, w, c, self.source)
        return decode_image(item, h, w, c, resize)

    def load(self, hwc, preprocess: Preprocess, on_error: str = "warn",
             batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode the whole dataset into memory (for small sets: calibration)."""
        parts = list(self.batches(hwc, batch_size, preprocess, on_error))
        x = np.concatenate([p[0] for p in parts])
        y = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        return x, y


def preprocessed(preprocess: Preprocess, raw: np.ndarray, where: str = "") -> np.ndarray:
    """``preprocess`` applied to raw pixels, refused when the result is not finite in float32 (only pixels far
    outside 0..255, a float .npz, can get there)."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = preprocess.apply(raw)
    if not np.isfinite(x).all():
        raise DataError(f"{where}pixels {float(raw.min()):g}..{float(raw.max()):g} are not finite in float32 after "
                        "(pixels * scale - mean) / std; check the data and --scale/--mean/--std")
    return x


def judge_skipped(source: str, total: int, read: int, skipped: list[str]) -> None:
    """After reading ``read`` of ``total`` images of ``source``: DataError when none could be read, else one
    warning line for the ``skipped`` ones (their messages), not one per file."""
    if read == 0:
        why = f" ({len(skipped)} unreadable, first: {skipped[0]})" if skipped else ""
        raise DataError(f"no readable image in {source}{why}")
    if skipped:
        log.warning("skipped %d of %d images in %s: %s%s", len(skipped), total, source,
                    skipped[0], f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "")


def effective_batch_size(hwc: Sequence[int], batch_size: int) -> int:
    """The batch size :meth:`Dataset.batches` uses: ``batch_size``, smaller for inputs so big that a batch
    would exceed MAX_BATCH_ELEMENTS values."""
    h, w, c = _check_hwc(hwc)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UsageError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    return max(1, min(int(batch_size), MAX_BATCH_ELEMENTS // (h * w * c)))


@dataclass(frozen=True)
class Shard:
    """Consecutive items of a Dataset, without their pixels: what a worker needs to open them itself.

    ``source`` and folder items are absolute paths (valid on every machine
    that sees the data at the same path); ``.npz`` items are row numbers, and
    ``rows`` the file's row count, checked when the worker loads it.
    """

    source: str
    layout: str
    items: tuple
    labels: np.ndarray | None = field(default=None, compare=False)
    class_names: tuple[str, ...] | None = None
    rows: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    def open(self, role: str = "data") -> Dataset:
        """The shard's items as a Dataset, its pixels read here (an ``.npz`` is loaded again)."""
        if self.layout != "npz":
            return Dataset(self.source, self.layout, self.items, self.labels, self.class_names)
        x, _, _ = load_npz(Path(self.source), role)
        if len(x) != self.rows:
            raise DataError(f"{role} data {self.source} holds {len(x)} images here but {self.rows} where the "
                            "work was planned: every machine must see the same file")
        return Dataset(self.source, "npz", self.items, self.labels, self.class_names, _npz_x=x)


def _check_hwc(hwc) -> tuple[int, int, int]:
    """The model input's (h, w, c) as positive ints, within MAX_IMAGE_ELEMENTS, else ShapeError."""
    try:
        h, w, c = (int(v) for v in hwc)
        if min(h, w, c) >= 1 and h * w * c <= MAX_IMAGE_ELEMENTS:
            return h, w, c
    except (TypeError, ValueError):
        pass
    raise ShapeError(f"the model input must have a fixed HxWxC size of at most {MAX_IMAGE_ELEMENTS:,} values, "
                     f"got {hwc!r}")


def decode_image(path: str, h: int, w: int, c: int, resize: str = "crop") -> np.ndarray:
    """Decode one image file to an (h, w, c) uint8 array."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    h, w, c = _check_hwc((h, w, c))
    try:
        # libtiff writes its complaints about a corrupt file to stderr itself: the error below says it all
        silenced = quiet() if str(path).lower().endswith((".tif", ".tiff")) else nullcontext()
        with warnings.catch_warnings(), silenced:  # Pillow warns above ~89 Mpixel (and refuses above twice that)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
                    # 16-bit grayscale: scale to 8 bits (Pillow's convert() clips at 255).
                    wide = np.asarray(im, dtype=np.float64) / 257.0
                    im = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
                if im.mode in ("RGBA", "LA", "P", "PA") and c != 4:
                    # Composite transparency on black, as most training pipelines do.
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                    im = Image.alpha_composite(bg, im)
                im = im.convert({1: "L", 3: "RGB", 4: "RGBA"}.get(c, "RGB"))
                if im.size != (w, h):
                    if resize == "crop":
                        im = ImageOps.fit(im, (w, h), method=Image.Resampling.BILINEAR)
                    else:
                        im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError,
            struct.error, zlib.error, IndexError, KeyError, TypeError, ZeroDivisionError, MemoryError) as exc:
        raise DataError(f"unreadable image {path}: {first_line(exc)}") from None  # all seen from Pillow
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] != c:
        raise ShapeError(f"cannot feed {arr.shape[-1]}-channel image {path} to a {c}-channel input")
    return arr


def _fit_array(img: np.ndarray, h: int, w: int, c: int, source: str) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ShapeError(f"{source}: each x entry must be HxW or HxWxC, got shape {img.shape}")
    if img.shape[-1] == 1 and c == 3:
        img = np.repeat(img, 3, axis=-1)
    if img.shape != (h, w, c):
        if img.dtype == np.uint8 and img.shape[-1] == c:
            from PIL import Image

            # One channel at a time: any channel count, and a 4th channel is not premultiplied as alpha.
            return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., k])).resize(
                (w, h), Image.Resampling.BILINEAR), np.uint8) for k in range(c)], axis=-1)
        raise ShapeError(f"{source}: images are {'x'.join(map(str, img.shape))} but the model "
                         f"takes {h}x{w}x{c}")
    return img


def _is_image(p: Path) -> bool:
    """An image file by its name; a broken link named like one counts too (then unreadable, and said so)."""
    return ((p.is_file() or (p.is_symlink() and not p.exists())) and p.suffix.lower() in IMAGE_EXTENSIONS
            and not p.name.startswith("."))


def _images_under(d: Path) -> list[str]:
    """The images in ``d`` and its subfolders, sorted, except in hidden ones (``.ipynb_checkpoints`` holds
    copies of a notebook's images: counted, they would weigh twice)."""
    return sorted(str(f) for f in d.rglob("*")
                  if _is_image(f) and not any(part.startswith(".") for part in f.relative_to(d).parts))


def open_dataset(source: str | os.PathLike, role: str = "data") -> Dataset:
    """Open an image folder (class subfolders or flat) or an ``.npz`` file."""
    path = Path(source)
    try:
        if not str(source).strip() or not path.exists():
            raise DataError(f"{role} path {str(source)!r} is empty" if not str(source).strip() else
                            f"{role} path {path} does not exist")
        if path.is_file():
            if path.suffix.lower() != ".npz":
                raise DataError(f"{role} path {path} is a file but not an .npz; pass an image folder or .npz")
            x, y, names = load_npz(path, role)
            return Dataset(str(path), "npz", tuple(range(len(x))), y, names, _npz_x=x)
        if not path.is_dir():
            raise DataError(f"{role} path {path} is neither a file nor a folder (pass an image folder or .npz)")
        return _open_folder(path, role)
    except (OSError, ValueError) as exc:  # a name too long, a folder that cannot be listed
        raise DataError(f"{role} path {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None


def _open_folder(path: Path, role: str) -> Dataset:
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = sorted(str(f) for f in path.iterdir() if _is_image(f))
    if subdirs and top:  # images at the top: a flat folder, unless class folders hold images too
        filled = [d.name for d in subdirs if _images_under(d)]
        if filled:
            raise DataError(f"{role} folder {path} mixes {len(top)} images at its top level with class folders "
                            f"({', '.join(filled[:5])}): put every image in a class folder, or all at the top")
        subdirs = []
    if subdirs:
        items: list[str] = []
        labels: list[int] = []
        names: list[str] = []
        for d in subdirs:
            files = _images_under(d)
            names.append(d.name)
            items.extend(files)
            labels.extend([len(names) - 1] * len(files))
        empty = [name for i, name in enumerate(names) if i not in set(labels)]
        if not items:
            raise DataError(f"{role} folder {path} holds no image files")
        if empty:
            raise DataError(f"{role} folder {path}: class folder(s) without images: {', '.join(empty[:5])}")
        return Dataset(str(path), "classes", tuple(items), np.asarray(labels, np.int64), tuple(names))
    if not top:
        raise DataError(f"{role} folder {path} is empty or holds no image files")
    return Dataset(str(path), "flat", tuple(top))
