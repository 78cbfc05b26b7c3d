"""Calibration and validation data: image folders and ``.npz`` files.

LIGHT layer: numpy and Pillow only, never TensorFlow.

Two folder layouts are understood:

* class subfolders (``DIR/<class>/<image>``): sorted folder names give labels;
* a flat folder of images: no labels, enough for calibration.

An ``.npz`` file holds ``x`` (N,H,W[,C] pixels) and optionally ``y`` (N,).

Images are decoded lazily and streamed in batches, so a 50,000-image validation
set is never held in memory at once.  Decoding handles grayscale, palette,
RGBA, odd sizes and EXIF orientation, then resizes to the model input.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeres.core.errors import DataError, ShapeError, UsageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
RESIZE_MODES = ("crop", "stretch")


@dataclass(frozen=True)
class Preprocess:
    """``x = (pixels * scale - mean) / std`` per channel, after resizing.

    The default (scale 1, mean 0, std 1) feeds raw 0..255 pixels, for models
    that normalise inside, like the edgeres zoo's.
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")
        if any(s == 0 for s in self.std):
            raise UsageError("--std values must be non-zero")
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
            raise UsageError("--mean and --std take 1 or 3 comma-separated values")

    @classmethod
    def parse(cls, scale: float = 1.0, mean: str | None = None, std: str | None = None,
              resize: str = "crop") -> Preprocess:
        return cls(scale=float(scale), mean=_floats(mean, "--mean", (0.0,)),
                   std=_floats(std, "--std", (1.0,)), resize=resize)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(scale=float(d.get("scale", 1.0)), mean=tuple(d.get("mean", (0.0,))),
                   std=tuple(d.get("std", (1.0,))), resize=d.get("resize", "crop"))

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and set(self.mean) == {0.0} and set(self.std) == {1.0}

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32)
        if self.is_identity:
            return x
        channels = x.shape[-1]
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise ShapeError(f"--mean/--std have {max(mean.size, std.size)} values but the model "
                             f"input has {channels} channels")
        return (x * np.float32(self.scale) - mean) / std

    def to_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "formula": "x = (pixels * scale - mean) / std"}


def _floats(text: str | None, option: str, default: tuple[float, ...]) -> tuple[float, ...]:
    if text is None or str(text).strip() == "":
        return default
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers, got {text!r}") from None


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
        if n is not None and n <= 0:
            raise UsageError(f"sample size must be positive, got {n}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.items))
        if n is not None:
            order = np.sort(order[:n])
        return self._subset(order)

    def split(self, n_first: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Two disjoint deterministic parts: ``n_first`` items and the rest."""
        order = np.random.default_rng(seed).permutation(len(self.items))
        return self._subset(np.sort(order[:n_first])), self._subset(np.sort(order[n_first:]))

    def _subset(self, idx: np.ndarray) -> Dataset:
        items = tuple(self.items[i] for i in idx)
        labels = None if self.labels is None else self.labels[idx]
        return replace(self, items=items, labels=labels)

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

    def batches(self, hwc: Sequence[int], batch_size: int, preprocess: Preprocess,
                on_error: str = "warn") -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(x, y)`` float32 NHWC batches; y is None for unlabelled data.

        Unreadable images are skipped with a warning (``on_error='warn'``) or
        raise DataError (``'error'``).  A dataset in which no image could be
        read raises DataError.
        """
        h, w, c = (int(v) for v in hwc)
        xs: list[np.ndarray] = []
        ys: list[int] = []
        yielded = 0
        skipped: list[str] = []
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
        if yielded == 0:
            why = f" ({len(skipped)} unreadable, first: {skipped[0]})" if skipped else ""
            raise DataError(f"no readable image in {self.source}{why}")
        if skipped:  # one summary line, not one per file
            log.warning("skipped %d of %d images in %s: %s%s", len(skipped), len(self.items), self.source,
                        skipped[0], f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "")

    def _emit(self, xs, ys, preprocess):
        x = preprocess.apply(np.stack(xs))
        y = np.asarray(ys, np.int64) if self.labels is not None else None
        return x, y

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


def decode_image(path: str, h: int, w: int, c: int, resize: str = "crop") -> np.ndarray:
    """Decode one image file to an (h, w, c) uint8 array."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
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
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from None
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

            mode = "L" if c == 1 else "RGB"
            pil = Image.fromarray(img[..., 0] if c == 1 else img, mode)
            arr = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), np.uint8)
            return arr[..., None] if c == 1 else arr
        raise ShapeError(f"{source}: images are {'x'.join(map(str, img.shape))} but the model "
                         f"takes {h}x{w}x{c}")
    return img


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def open_dataset(source: str | os.PathLike, role: str = "data") -> Dataset:
    """Open an image folder (class subfolders or flat) or an ``.npz`` file."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{role} path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{role} path {path} is a file but not an .npz; pass an image folder or .npz")
        return _open_npz(path, role)
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        items: list[str] = []
        labels: list[int] = []
        names: list[str] = []
        for d in subdirs:
            files = sorted(str(f) for f in d.rglob("*") if _is_image(f))
            names.append(d.name)
            items.extend(files)
            labels.extend([len(names) - 1] * len(files))
        empty = [d.name for d in subdirs if not any(_is_image(f) for f in d.rglob("*"))]
        if not items:
            raise DataError(f"{role} folder {path} holds no image files")
        if empty:
            raise DataError(f"{role} folder {path}: class folder(s) without images: {', '.join(empty[:5])}")
        return Dataset(str(path), "classes", tuple(items), np.asarray(labels, np.int64), tuple(names))
    files = sorted(str(f) for f in path.iterdir() if _is_image(f))
    if not files:
        raise DataError(f"{role} folder {path} is empty or holds no image files")
    return Dataset(str(path), "flat", tuple(files))


def _open_npz(path: Path, role: str) -> Dataset:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy renamed to .npz
            raise DataError(f"{role} file {path} is a single .npy array, not an .npz archive; "
                            f"save it with numpy.savez(path, x=..., y=...)")
        with loaded as z:
            if "x" not in z.files:
                raise DataError(f"{role} file {path} has no 'x' array (found: {', '.join(z.files)})")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{role} file {path} is not a readable .npz: {exc}") from None
    if x.ndim not in (3, 4) or len(x) == 0:
        raise DataError(f"{role} file {path}: 'x' must be a non-empty (N,H,W[,C]) array, got {x.shape}")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise DataError(f"{role} file {path}: 'y' has {len(y)} labels for {len(x)} images")
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise DataError(f"{role} file {path}: 'y' must hold non-negative integer labels")
        y = y.astype(np.int64)
    return Dataset(str(path), "npz", tuple(range(len(x))), y, None, _npz_x=x)
