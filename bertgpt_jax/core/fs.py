"""Workdir paths that may be local or in object storage (gs://, s3://).

Everything the trainer keeps in a workdir (config.yaml, checkpoints, metrics.jsonl, TensorBoard
events, tokenizer.model) goes through `etils.epath.Path`, the path type Orbax itself uses, so a
run on a TPU pod can keep its workdir in a GCS bucket that every host sees. Remote paths need an
fsspec backend for the scheme (gcsfs for gs://: `pip install 'bertgpt-jax[gcs]'`); Orbax writes
the arrays through TensorStore's own GCS driver.

Object stores have no rename and no append: an object appears whole when its upload finishes.
`write_text`/`copy_file` therefore write straight to the object there, and through a temporary
file plus `os.replace` on a local disk; files that grow (metrics.jsonl, event files) are written
locally and mirrored (`Mirror`).

Paths that are read as files by other libraries (a prepared store is memory-mapped, tokenizers
and HF directories are opened by SentencePiece and safetensors) must be local: `require_local`
turns a URL there into one sentence naming the fix, instead of the folder "gs:" that
`pathlib.Path("gs://b/x")` would silently create.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from etils import epath

from bertgpt_jax.core.errors import FsError

REMOTE_SCHEMES = ("gs", "s3")
_BACKEND_HINT = {"gs": ("gcsfs", "'bertgpt-jax[gcs]'"), "s3": ("s3fs", "s3fs")}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_log = logging.getLogger(__name__)


def is_remote(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(tuple(f"{s}://" for s in REMOTE_SCHEMES))


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: remote URLs as they are (after checking that this Python can
    reach them), local paths made absolute."""
    text = os.fspath(path)
    if is_remote(text):
        _check_backend(text.split("://", 1)[0], text)
        return epath.Path(text)
    if _URL.match(text):  # e.g. gcs://: abspath would make it a local folder named "gcs:"
        schemes = " or ".join(f"{s}://" for s in REMOTE_SCHEMES)
        raise FsError(f"{text}: the URLs understood here are {schemes}; use one, or a local path.")
    return epath.Path(os.path.abspath(text))


def require_local(path: str | os.PathLike, what: str, fix: str | None = None) -> Path:
    """`path` as a local Path; a URL (gs://, s3://, ...) raises FsError naming `what` and `fix`
    (by default: a local path or the bucket's Cloud Storage FUSE mount)."""
    text = os.fspath(path)
    if not _URL.match(text):
        return Path(text)
    raise FsError(
        f"{what} {text} must be a path on a file system, not a URL; "
        f"{fix or mount_fix(text, 'use a local path')}."
    )


def mount_fix(url: str, first: str) -> str:
    """`first`, plus where a bucket URL appears as files: gs://b/x is /gcs/b/x under the Cloud
    Storage FUSE mount of `python -m launch.tpu setup --mount-bucket b`."""
    if url.startswith("gs://"):
        bucket = url.removeprefix("gs://").split("/", 1)[0]
        mount = f"/gcs/{url.removeprefix('gs://')} after `gcsfuse {bucket} /gcs/{bucket}`"
    elif url.startswith("s3://"):
        mount = "through s3fs-fuse or rclone mount"
    else:
        return first
    return f"{first} or the bucket mounted as a file system (e.g. {mount})"


def _check_backend(scheme: str, text: str) -> None:
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as err:
        package, install = _BACKEND_HINT[scheme]
        raise FsError(
            f"{text}: reading and writing {scheme}:// needs the {package} package; install it "
            f"with pip install {install} (or use a local or mounted path)."
        ) from err


def write_text(path: epath.Path, text: str) -> None:
    """Writes `text` so that a reader sees the old file or the new one, never a part."""
    write_bytes(path, text.encode())


def write_bytes(path: epath.Path, data: bytes) -> None:
    if is_remote(path):
        path.write_bytes(data)
        return
    atomic_write(Path(os.fspath(path)), lambda tmp: tmp.write_bytes(data))


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Runs `write(tmp)` on a temporary name in the same directory, then renames it onto
    `target`: a reader sees the old file or the new one, never a part, and a failed write
    leaves nothing behind. The file gets the usual umask permissions (safetensors creates
    its files owner-only)."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# What a full or read-only disk says, by errno, inside the messages of libraries that do not
# raise OSError for it (TensorStore writing a checkpoint: "[OS error 28: No space left on device]").
_DISK_ERRORS = {
    errno.ENOSPC: os.strerror(errno.ENOSPC),
    errno.EDQUOT: os.strerror(errno.EDQUOT),
    errno.EROFS: os.strerror(errno.EROFS),
}


def disk_error(err: BaseException | None, where: str | os.PathLike) -> OSError | None:
    """The full-disk or read-only-disk OSError behind `err` (itself, one it was raised from, or
    one its message quotes, as TensorStore's and Orbax's errors do), naming `where` when it names
    no file; None for any other error."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
            return err if err.filename else OSError(err.errno, err.strerror, os.fspath(where))
        for code, message in _DISK_ERRORS.items():
            if message in str(err):
                return OSError(code, message, os.fspath(where))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def disk_errors(where: str | os.PathLike) -> Iterator[None]:
    """Re-raises a full or read-only disk met inside the block, however a library wrapped it, as
    its OSError (`disk_error`), which the command line turns into one sentence."""
    try:
        yield
    except Exception as err:
        disk = disk_error(err, where)
        if disk is None:
            raise
        raise disk from err


def require_writable_dir(path: str | os.PathLike, what: str) -> None:
    """A local `path` that is a directory, or can be created as one, on a file system this
    process can write to; else FsError naming `what` (e.g. "--workdir") and the fix. Nothing is
    left behind: the probe file is created and removed in the nearest existing ancestor."""
    if is_remote(path):
        return  # object stores: writability shows at the first upload
    target = Path(os.path.abspath(os.fspath(path)))
    if target.exists() and not target.is_dir():
        raise FsError(f"{what} {target} is a file, not a directory; choose another {what}.")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FsError(f"{what} {target} cannot be created: {existing} is a file; choose another.")
    try:  # os.access is not enough: root passes it on read-only bind mounts and ACLs differ
        handle, probe = tempfile.mkstemp(prefix=".bertgpt-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise FsError(
            f"{what} {target} cannot be written ({err.strerror} in {existing}); choose a "
            "directory on a writable file system."
        ) from err


def staging_path(target: Path, kind: str) -> Path:
    """A hidden sibling `.NAME.KIND-PID-RANDOM` to build `target` in before renaming it into
    place; the process id lets a later run tell one left by a killed process (`remove_stale`)."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale(target: Path, kinds: tuple[str, ...]) -> None:
    """Deletes the hidden siblings of `target` that `staging_path` made for these kinds in a
    process that is no longer running (killed mid-way): never anything else."""
    if not target.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(target.name)}\.({'|'.join(kinds)})-(\d+)-[0-9a-f]{{8}}")
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and int(match.group(2)) != os.getpid() and not _running(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)


def remove_stale_writes(directory: Path) -> None:
    """Deletes the `.NAME.tmp-PID` files that `atomic_write` left in `directory` when its
    process was killed mid-write (that process no longer running): never anything else."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        match = re.fullmatch(r"\..+\.tmp-(\d+)", entry.name)
        if match and entry.is_file() and not _running(int(match.group(1))):
            entry.unlink(missing_ok=True)


def copy_file(source: str | os.PathLike, target: epath.Path) -> None:
    write_bytes(target, epath.Path(source).read_bytes())


def move_tree(source: epath.Path, target: epath.Path) -> None:
    """Moves a directory. Object stores have neither renames nor empty directories: every object
    is copied (server-side), then the source is deleted."""
    if not is_remote(source):
        shutil.move(os.fspath(source), os.fspath(target))
        return

    def copy(src: epath.Path, dst: epath.Path) -> None:
        for child in src.iterdir():
            if child.is_dir():
                copy(child, dst / child.name)
            else:
                dst.mkdir(parents=True, exist_ok=True)
                child.copy(dst / child.name)

    copy(source, target)
    source.rmtree()


class Mirror:
    """Files that grow (metrics.jsonl, TensorBoard events) are written to `local` and, for a
    remote workdir, uploaded whole to `remote` at most every `every_s` seconds and on `sync
    (force=True)`; a kill loses at most that window. For a local workdir `local` is the
    workdir itself and nothing is copied."""

    def __init__(self, remote: epath.Path, every_s: float = 30.0):
        self.remote = remote
        self.every_s = every_s
        self._last = time.monotonic()
        self._sent: dict[str, tuple[int, int]] = {}
        self.failure: OSError | None = None  # of the last sync, None when it succeeded
        self.active = is_remote(remote)  # else `local` is the workdir itself
        if self.active:
            self.local = Path(tempfile.mkdtemp(prefix="bertgpt-workdir-"))
        else:
            self.local = Path(os.fspath(remote))
            self.local.mkdir(parents=True, exist_ok=True)

    def fetch(self, name: str) -> None:
        """Copies `remote/name` (if it exists) to the local side, before appending to it."""
        if self.active and (self.remote / name).exists():
            (self.local / name).write_bytes((self.remote / name).read_bytes())
            self._sent[name] = self._signature(self.local / name)

    @staticmethod
    def _signature(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns

    def sync(self, force: bool = False) -> None:
        """Uploads the files changed since their last upload. A failed upload (an OSError:
        network, permission, quota) is logged and retried at the next sync, so that a bucket
        hiccup does not stop training; `close` reports one that is still failing."""
        if not self.active or (not force and time.monotonic() - self._last < self.every_s):
            return
        self._last = time.monotonic()
        try:
            self._upload()
        except OSError as err:
            self.failure = err
            _log.warning(
                "could not upload %s to %s (%s: %s); retrying at the next sync",
                self.local,
                self.remote,
                type(err).__name__,
                err,
            )
        else:
            self.failure = None

    def _upload(self) -> None:
        for file in sorted(p for p in self.local.rglob("*") if p.is_file()):
            name = file.relative_to(self.local).as_posix()
            signature = self._signature(file)
            if self._sent.get(name) != signature:
                target = self.remote / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(file.read_bytes())
                self._sent[name] = signature

    def close(self) -> None:
        """The last upload. If it fails, the local copy is kept and FsError names it, unless an
        exception is already propagating (close in a `finally`): then the failure is logged, so
        that it does not hide that exception."""
        self.sync(force=True)
        if not self.active:
            return
        if self.failure is None:
            shutil.rmtree(self.local, ignore_errors=True)
            return
        message = (
            f"the last upload of {self.local} to {self.remote} failed ({self.failure}); the "
            f"files are kept there, copy them with `gcloud storage cp -r {self.local}/* "
            f"{self.remote}/`"
        )
        if sys.exc_info()[1] is not None:
            _log.error("%s.", message)
            return
        raise FsError(f"{message}.") from self.failure
