"""Files that are either whole or absent: nothing half-written survives a crash or Ctrl-C."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _new_file_mode())  # mkstemp creates 0600; a report or a checkpoint should not be private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 with ``\n`` line ends on every platform (committed data files must compare byte for byte)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline="\n"))


def writable_folder(folder: str | os.PathLike, fix: str = "choose another --out") -> Path:
    """Create ``folder`` if needed and prove it takes a file, before any work that would write there.

    ``fix`` ends the error message: what the caller's user changes (a CLI flag, an argument).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a probe of its own (unique name, removed on close): processes of one `accelerate launch`
        # probing the same folder at once must not delete each other's
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write to output folder {folder}: {error}; {fix}") from error
    return folder


def _new_file_mode() -> int:
    """The permissions ``open()`` gives a new file: 0o666 minus the process umask."""
    # Reading the umask means setting it; it is put straight back. A file another thread creates
    # in between gets 0o022's permissions: harmless for what this package writes.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
