"""Atomic outputs.  Standard library, plus filelock for the output folder's lock.

A run writes everything into a hidden staging folder beside the output folder and renames it into place
only when the run succeeds, so a failed or interrupted run never leaves a folder of artifacts that looks
valid.  It holds a lock beside the output all along, so a second run into the same folder fails at once.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

from edgeres.core.errors import OutputExistsError, OutputWriteError, UsageError
from edgeres.core.jsonfmt import to_json  # noqa: F401 - imported from here by the writers of reports
from edgeres.core.stop import on_stop, signals_held, stops_cleanly

log = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_LOCK_WAIT = 1.0  # seconds: rides out another run's check_output_dir probe, never a run
PathLike = str | os.PathLike


def check_output_dir(out: Path, force: bool, inputs: Iterable[PathLike | None] | None = None) -> None:
    """Refuse, before any expensive work, an output folder this run cannot or must not replace.

    UsageError (2): a name that is empty, ``.`` or ``..``; a filesystem root, the current or home folder or a
    folder holding one; a symbolic link (never written through nor replaced, even with ``force``: pass its
    target); a folder that is, holds or lies inside one of ``inputs`` (the run's model, data and weights;
    None and strings that are not existing paths, such as zoo names, are ignored).  OutputExistsError (8):
    not a folder; non-empty without ``force``; another run holds its lock.  OutputWriteError (8): an
    unwritable parent; with ``force``, an existing run that cannot be moved aside and removed.
    """
    out = Path(out)
    _check(out, force, inputs)
    if out.parent.is_dir():
        with _output_lock(out):  # only a probe: staged_dir takes the lock for the run itself
            pass


@contextmanager
def staged_dir(out: Path, force: bool, *, inputs: Iterable[PathLike | None] | None = None) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``out`` in one rename.

    :func:`check_output_dir`'s checks run first, and again under the lock ``.NAME.lock`` beside ``out``, held
    to the end.  The stage ``.NAME.partial-XXXXXXXX`` gets the umask's mode; any exception, Ctrl-C or SIGTERM
    removes it, a signal through :mod:`edgeres.core.stop`'s handler (SIGTERM gets it meanwhile, when it has
    its default action; the process then ends with 143).  SIGKILL may leave a stage (the next run removes it),
    never a valid-looking ``out``.
    Without ``force`` the stage is renamed onto ``out``, replacing only a missing or empty folder: files that
    appeared meanwhile are kept, the stage dropped, OutputExistsError raised.  With ``force`` a non-empty
    ``out`` is moved aside and deleted.  A symbolic link ``out`` is refused (UsageError), never followed.
    """
    out = Path(out)
    _check(out, force, inputs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(out.parent, exc) from exc
    stage: Path | None = None

    def _unfinished() -> str | None:  # a signal's cleanup (core.stop): the stage goes, and the process ends
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
            return "the unfinished run folder was removed"
        return None

    with stops_cleanly(), _output_lock(out), on_stop(_unfinished):
        _check(out, force)  # again, now that no other edgeres run can change it
        stale = re.compile(re.escape(f".{out.name}.partial-") + r"[a-z0-9_]{8}")  # a killed run's, under the lock
        with suppress(OSError), os.scandir(out.parent) as it:
            for entry in (e for e in it if stale.fullmatch(e.name) and e.is_dir(follow_symlinks=False)):
                shutil.rmtree(entry.path, ignore_errors=True)
        try:
            with signals_held():
                try:
                    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
                except OSError as exc:
                    raise _write_error(out.parent, exc) from exc
                os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it 0700 whatever the umask
            yield stage
            with signals_held():
                _publish(stage, out, force)
                stage = None
        except BaseException as exc:
            if stage is not None:
                with signals_held():
                    shutil.rmtree(stage, ignore_errors=True)
                    stage = None
            if isinstance(exc, OSError) and exc.errno in _NO_SPACE:  # a full disk anywhere in the body
                raise OutputWriteError(f"cannot write the run folder {out}: {exc}") from exc
            raise


def _check(out: Path, force: bool, inputs: Iterable[PathLike | None] | None = None) -> None:
    if out.name in ("", ".", ".."):
        raise UsageError(f"refusing output folder '{out}': a run folder is renamed into place and replaced as a "
                         "whole, so it needs a name of its own, e.g. -o edgeres-out")
    real = _real(out)
    if real.parent == real:
        raise UsageError(f"refusing output folder {out}: it is a filesystem root")
    for label, special in _special_folders():
        if real == special or real in special.parents:
            raise UsageError(f"refusing output folder {out}: it is or contains {label}, and a run folder is "
                             "replaced as a whole; choose a new folder, e.g. -o edgeres-out")
    if out.is_symlink():
        raise UsageError(f"output folder {out} is a symbolic link (to {os.readlink(out)}); edgeres replaces a run "
                         "folder as a whole and never writes through or replaces a link: pass the target folder "
                         "as -o, or remove the link")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a folder")
    for given in inputs or ():
        with suppress(OSError, ValueError):  # a zoo name or a keyword is not a path
            source = _real(given) if given is not None and str(given) and Path(given).exists() else None
            if source is not None and (source == real or real in source.parents):
                raise UsageError(f"output folder {out} holds this run's input {given}; the run folder is replaced "
                                 "as a whole, which would delete it: choose another -o")
            if source is not None and source in real.parents:
                raise UsageError(f"output folder {out} is inside this run's input folder {given}: choose an -o "
                                 "outside it")
    if out.is_dir() and not _is_empty(out) and not force:
        raise OutputExistsError(f"output folder {out} already exists and is not empty; pass --force to replace it")
    _check_writable(out, force)


def _check_writable(out: Path, force: bool) -> None:
    # The lock, the stage and the final rename all live in out's parent; with force, out is moved and deleted.
    parent = _real(out.parent)
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent  # the folder that staged_dir's mkdir would create the first missing one in
    if not parent.is_dir():
        raise OutputWriteError(f"cannot create output folder {out}: {parent} is not a folder")
    if not _can_write(parent):
        raise OutputWriteError(f"cannot write output folder {out}: {parent} is not writable (the run is staged "
                               "and renamed into place there)")
    if force and out.is_dir() and not _is_empty(out):
        st, pst = out.stat(), parent.stat()
        euid = os.geteuid() if hasattr(os, "geteuid") else 0
        sticky_other = pst.st_mode & stat.S_ISVTX and euid not in (0, st.st_uid, pst.st_uid)
        if sticky_other or not _can_write(out):
            raise OutputWriteError(f"cannot replace output folder {out} with --force: it is not writable or not "
                                   "yours, so the previous run in it could not be moved aside and removed")


def _real(p: PathLike) -> Path:
    return Path(os.path.realpath(p))


def _special_folders() -> Iterator[tuple[str, Path]]:
    for label, where in (("the current folder", Path.cwd), ("your home folder", Path.home)):
        with suppress(KeyError, RuntimeError, OSError):  # no home; a deleted current folder
            yield label, _real(where())


def _can_write(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def _is_empty(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return next(it, None) is None
    except OSError as exc:
        raise OutputWriteError(f"cannot read output folder {folder}: {exc.strerror or exc}") from exc


@contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``out`` with filelock's FileLock (flock on Unix); OutputExistsError if held.

    The kernel drops a flock when its process dies, even by SIGKILL, so a killed run never blocks the next.
    The file is removed at the end while still locked, and whoever locks it checks that the name still
    points at the file it locked, else tries again: removing it after the release would let two runs lock
    two files of one name (filelock issues #27, #574).  Where that cannot be checked, the file is kept.
    """
    path = out.parent / f".{out.name}.lock"
    busy = f"another edgeres run is writing {out} (lock {path.name} held); wait for it or choose another -o"
    for _ in range(5):
        lock = FileLock(str(path), timeout=_LOCK_WAIT)
        try:
            lock.acquire()
        except Timeout:
            raise _unlockable(path) or OutputExistsError(busy) from None
        except NotImplementedError:  # filelock 3.x on a filesystem without flock
            log.warning(f"cannot lock {path} on this filesystem: concurrent runs into {out} are not detected")
            yield
            return
        except OSError as exc:
            raise _write_error(path, exc) from exc
        if _same_file(lock, path) is not False:
            break
        lock.release()  # we locked a file another run had just removed: lock the new one
    else:
        raise OutputExistsError(busy)

    def _remove() -> None:  # still locked; also a signal's cleanup (core.stop), the kernel then drops the flock
        if _same_file(lock, path) and _filelock_keeps_file():
            with suppress(OSError):
                path.unlink()

    try:
        with on_stop(_remove):
            yield
    finally:
        try:
            _remove()
        finally:
            lock.release()


def _unlockable(path: Path) -> OutputWriteError | None:
    """Why ``path`` cannot be locked when no run holds it: filelock waits for a lock file it cannot create
    (a read-only folder, /proc) as if another run held it."""
    try:
        if not path.exists():
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
            path.unlink()
    except OSError as exc:
        return _write_error(path, exc)
    return None


def _same_file(lock: FileLock, path: Path) -> bool | None:
    """Whether ``path`` still names the file ``lock`` holds; None when that cannot be told."""
    context = getattr(lock, "_context", None)  # filelock 3.12 to 4.x keep the descriptor there
    fd = getattr(context, "lock_file_fd", None)
    if not isinstance(fd, int) or getattr(context, "soft_fallback", False):
        return None
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except OSError:  # removed
        return False


@functools.cache
def _filelock_keeps_file() -> bool:
    # Some filelock 3.x releases remove the file themselves (still locked): removing it again could delete
    # a newer run's lock file.
    try:
        with tempfile.TemporaryDirectory(prefix="edgeres-lock-") as tmp:
            probe = FileLock(os.path.join(tmp, "probe.lock"), timeout=0)
            probe.acquire()
            probe.release()
            return os.path.exists(os.path.join(tmp, "probe.lock"))
    except Exception:  # if in doubt, keep the file
        return False


def _publish(stage: Path, out: Path, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputExistsError(f"output path {out} became a link or a file while this run was writing; it was "
                                "kept and this run's results discarded")
    old = None
    if force and out.is_dir() and not _is_empty(out):
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.replace(out, old)
        except OSError as exc:
            raise OutputWriteError(f"cannot move the previous run {out} aside: {exc.strerror or exc}") from exc
    try:
        os.replace(stage, out)  # onto a missing or empty folder only: anything else fails, atomically
    except OSError as exc:
        if old is not None:
            with suppress(OSError):
                os.replace(old, out)  # put the previous run back
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and old is None:
            raise OutputExistsError(f"files appeared in output folder {out} while this run was writing; they "
                                    "were kept and this run's results discarded") from None
        kept = f"; the previous run is in {old}" if old is not None and os.path.lexists(old) else ""
        raise OutputWriteError(f"cannot rename the run folder into place at {out}: {exc.strerror or exc}{kept}") \
            from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if os.path.lexists(old):
            log.warning(f"could not remove all of the previous run, moved aside to {old}: remove it by hand")


@functools.cache
def _umask() -> int:
    """The umask, read once: from /proc on Linux, else set and restored (to 0o077, not 0, meanwhile: a file
    another thread creates then is too private, never too open)."""
    with suppress(OSError, ValueError, IndexError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _write_error(path: Path, exc: OSError) -> OutputWriteError:
    return OutputWriteError(f"cannot write {path}: {exc.strerror or exc}")


def check_output_file(path: PathLike, option: str, force: bool = True) -> None:
    """Refuse, before the work that would fill it, an output file that cannot be written: its folder is
    missing or not writable, or the path is a folder (write_bytes_atomic would only find out at the end);
    without ``force``, a file that exists (OutputExistsError, 8)."""
    path = Path(path)
    if path.is_dir():
        raise OutputWriteError(f"{option} {path} is a folder: give a file name")
    if not force and path.exists():
        raise OutputExistsError(f"{option} {path} already exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise OutputWriteError(f"cannot write {option} {path}: folder {path.parent} does not exist")
    if not _can_write(_real(path.parent)):
        raise OutputWriteError(f"cannot write {option} {path}: folder {path.parent} is not writable")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, with the mode ``open()`` gives under the umask; OSError (a full
    disk, an unwritable folder) becomes OutputWriteError."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600 whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
