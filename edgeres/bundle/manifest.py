"""The bundle's ``manifest.json``, and the check that a bundle is exactly what was validated.

LIGHT: standard library and edgeres.core only.  ``edgeres verify``, and ``validate``/``bench`` given a
bundle (or a model in one), call :func:`verify` before they run anything: every listed file must be there
with the recorded size and SHA-256.  This is integrity, not authenticity: whoever can rewrite the files
can rewrite the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeres.core.errors import BundleError, EdgeresError, first_line
from edgeres.core.fs import sha256_file
from edgeres.core.preprocess import Preprocess

MANIFEST = "manifest.json"
FORMAT = "edgeres-bundle"
SCHEMA_VERSION = 1  # bump when a reader of version N would misread the manifest; readers refuse newer ones
MAX_MANIFEST_BYTES = 16 << 20


def is_bundle(path: str | Path) -> bool:
    """A folder with a manifest.json (whether or not it is valid)."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def bundle_of(model: str | Path) -> Path | None:
    """The bundle folder ``model`` is (a folder) or sits in, if any."""
    p = Path(model)
    if is_bundle(p):
        return p
    return p.parent if p.is_file() and (p.parent / MANIFEST).is_file() else None


def load(bundle: str | Path) -> dict:
    """The manifest, checked for shape and schema version (not the hashes: see :func:`verify`)."""
    where = Path(bundle) / MANIFEST
    if not where.is_file():
        raise BundleError(f"{bundle} is not an edgeres bundle: it has no {MANIFEST}")
    try:
        if where.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{where} is {where.stat().st_size:,} bytes, too large for a manifest")
        m = json.loads(where.read_text(encoding="utf-8"))
    except BundleError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{where} is not readable JSON: {first_line(exc)}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{where} is not an edgeres bundle manifest (no \"format\": \"{FORMAT}\")")
    version = m.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{where}: schema_version must be a positive whole number, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(f"{where} is bundle schema {version}, newer than this edgeres reads ({SCHEMA_VERSION}): "
                          f"upgrade edgeres (pip install -U edgeres)")
    files, models = m.get("files"), m.get("models")
    if not isinstance(files, dict) or not files or not all(_entry_ok(k, v) for k, v in files.items()):
        raise BundleError(f"{where}: \"files\" must map each file name to its sha256 and size_bytes")
    if not isinstance(models, list) or not models or not all(
            isinstance(x, dict) and x.get("file") in files for x in models):
        raise BundleError(f"{where}: \"models\" must list the bundle's models, each a file in \"files\"")
    for x in models:  # what an app applies before the model: a bad value is a broken bundle, not bad data
        pre = x.get("preprocessing")
        if pre is not None and not isinstance(pre, dict):
            raise BundleError(f"{where}: the preprocessing of {x['file']} is not an object")
        if pre is not None:
            _preprocessing(pre, f"{where}, {x['file']}")
    return m


def _preprocessing(pre: dict, source: str) -> Preprocess:
    """A manifest entry's preprocessing (none beyond resizing when it was folded in); BundleError if invalid."""
    try:
        return Preprocess.from_dict({"resize": pre.get("resize", "crop")} if pre.get("folded") else pre,
                                    source=source)
    except EdgeresError as exc:
        raise BundleError(str(exc)) from None


def _entry_ok(name: object, entry: object) -> bool:
    return (isinstance(name, str) and name and Path(name).name == name and name not in (".", "..")
            and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("size_bytes"), int) and not isinstance(entry.get("size_bytes"), bool))


def verify(bundle: str | Path) -> dict:
    """The manifest, after checking every file it lists; BundleError naming the first file that differs."""
    bundle = Path(bundle)
    m = load(bundle)
    for name, entry in m["files"].items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path} is missing: {MANIFEST} lists it")
        size = path.stat().st_size
        if size != entry["size_bytes"]:
            raise BundleError(f"{path} changed since the bundle was made: {size:,} bytes, {MANIFEST} says "
                              f"{entry['size_bytes']:,}")
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise BundleError(f"{path} cannot be read: {first_line(exc)}") from None
        if digest != entry["sha256"]:
            raise BundleError(f"{path} changed since the bundle was made: sha256 {digest[:16]}..., {MANIFEST} "
                              f"says {entry['sha256'][:16]}...")
    return m


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def model_entry(manifest: dict, model: str | Path) -> dict:
    """The manifest's entry for the model file ``model``."""
    name = Path(model).name
    for x in manifest["models"]:
        if x["file"] == name:
            return x
    raise BundleError(f"{model} is in a bundle but {MANIFEST} does not list it as a model")


def resolve(path: str | Path) -> tuple[list[Path], dict | None]:
    """The model files ``path`` names, after checking their bundle if they are in one.

    A bundle folder gives all its models (the TFLite one first); a model file inside a bundle gives itself,
    once the whole bundle checks; anything else is returned as it is, with no manifest.
    """
    bundle = bundle_of(path)
    if bundle is None:
        return [Path(path)], None
    m = verify(bundle)
    if Path(path).is_dir():
        return [bundle / x["file"] for x in sorted(m["models"], key=lambda x: x.get("format") != "tflite")], m
    model_entry(m, path)
    return [Path(path)], m


def preprocess_of(model: str | Path) -> Preprocess | None:
    """The preprocessing an app applies before ``model`` in a bundle (none beyond resizing when it was folded
    in); None when ``model`` is not in a bundle."""
    bundle = bundle_of(model)
    if bundle is None:
        return None
    entry = model_entry(load(bundle), model)
    pre = entry.get("preprocessing")
    if not isinstance(pre, dict):
        raise BundleError(f"{MANIFEST} has no preprocessing for {Path(model).name}")
    return _preprocessing(pre, f"{MANIFEST} in {bundle}")
