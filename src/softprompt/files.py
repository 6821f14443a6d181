"""Files written so that a crash never leaves half of one, and exceptions told in one line.

Every file or folder softprompt writes for a user goes through here: a file is written under a
temporary name beside its final one and renamed into place (``os.replace`` is atomic on one file
system); a folder is filled beside its final name and renamed. A kill at any moment leaves the old
version or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def one_line(exc: BaseException | str, limit: int = 200) -> str:
    """An exception's message on one line (whitespace collapsed), cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[str]:
    """A temporary file name beside ``path``, renamed to ``path`` when the block ends without an error."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then renamed to ``path``."""
    with _staged(Path(path)) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """A file to write ``path`` through, piece by piece; it becomes ``path`` only when the block ends
    without an error."""
    with _staged(Path(path)) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f


def atomic_folder(folder: str | Path, write: Callable[[Path], None], existing: str = "merge") -> Path:
    """``write(tmp)`` fills a temporary folder beside ``folder``, which then becomes ``folder``.

    When ``folder`` exists already, ``existing="merge"`` renames each new file into it (a run's
    output_dir keeps its logs), ``existing="replace"`` swaps the whole folder for the new one and
    ``existing="keep"`` keeps the old one (another process wrote the same thing first).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        new = stage / folder.name
        new.mkdir()
        write(new)
        os.chmod(new, 0o777 & ~_umask())
        if folder.exists() and existing == "keep":
            return folder
        if folder.exists() and existing == "merge":
            for item in sorted(new.iterdir()):
                os.replace(item, folder / item.name)
        else:
            if folder.exists():  # replace: the old folder goes into the stage and is removed with it
                folder.rename(stage / "replaced")
            os.replace(new, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder
