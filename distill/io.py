"""Small, crash-safe file writes: everything the pipeline writes goes through here.

A write lands under a temporary name (``.<name>.<random>.tmp``) in the destination folder
and is renamed into place, so a killed run never leaves a half-written file that a resumed
run would trust. What a killed run does leave is that temporary file: `remove_stale_temps`
clears them (the bank's stages call it when they start). Files get the usual permissions
(``0666`` less the umask, ``0644`` for the common ``022``), so a shared bank is readable by
the others; a full disk is one `DataError` line naming the file and the space it needs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.errors import DataError

log = logging.getLogger(__name__)

# When this process started (near enough: when it first imported distill). A temporary file
# older than that cannot belong to this run.
STARTED = time.time()
TEMP_GLOB = ".*.tmp"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _new_temp(path: Path) -> Path:
    """Create an empty temporary file beside ``path``.

    ``os.open`` with mode 0o666 lets the kernel apply the umask (``tempfile.mkstemp`` would
    make every bank file 0600, unreadable to the other users of a shared bank).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def temp_dir(path: str | Path) -> Path:
    """Create an empty temporary folder beside ``path`` (renamed onto it when complete).

    ``os.mkdir`` with mode 0o777 lets the umask apply (``tempfile.mkdtemp`` makes 0700
    folders: a distilled set nobody else could open).
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; if the block succeeds it replaces
    ``path`` (an existing folder is swapped out and removed), else it is removed. Readers see
    the old folder or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _no_space_message(path: Path, written: int, size_hint: int | None) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    need = (
        f"needs about {human_bytes(size_hint)}"
        if size_hint
        else f"needs more than the {human_bytes(written)} written before the disk filled"
    )
    have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    return (
        f"no space left on the device holding {path.parent}: writing {path.name} {need}, "
        f"{have}; free some space (or point paths.output_dir / paths.bank_dir elsewhere) "
        "and re-run: finished files and shards are kept"
    )


@contextlib.contextmanager
def atomic_path(path: str | Path, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Args:
        size_hint: bytes the file will take, when the caller knows; a full disk's message
            then says how much space the write needs.

    Raises:
        DataError: the disk (or quota) is full; the temporary file is removed first.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in _NO_SPACE:
            raise
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
        if tmp is not None and tmp.exists():
            tmp.unlink()  # before measuring: its bytes are free again
        raise DataError(_no_space_message(path, written, size_hint)) from e
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def remove_stale_temps(folder: str | Path, before: float | None = None) -> list[Path]:
    """Delete the temporary files a killed run left in ``folder`` (not recursive).

    Only files last modified before ``before`` (default: this process's start) go: a file
    written since may be another process's write in flight (``meta.json`` is rewritten by
    stages that take no lock). No run ever reads a temporary name, so none trusts one; this
    only keeps them from piling up.
    """
    before = STARTED if before is None else before
    gone = []
    for p in Path(folder).glob(TEMP_GLOB):
        try:
            if p.is_file() and p.stat().st_mtime < before:
                p.unlink()
                gone.append(p)
        except FileNotFoundError:  # another process's rename or clean-up won the race
            continue
    if gone:
        log.info(
            "removed %d temporary file(s) left in %s by an interrupted run: %s",
            len(gone),
            folder,
            ", ".join(p.name for p in gone[:5]) + (" ..." if len(gone) > 5 else ""),
        )
    return gone


def fsync_file(f) -> None:
    """Flush a file object to the disk (a power cut then cannot leave a renamed empty file)."""
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path, size_hint=len(data)) as tmp, open(tmp, "wb") as f:
        f.write(data)
        fsync_file(f)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_rows(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    """Write a CSV atomically (quoting handled by the csv module)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
