"""Server-side `filename` requests: confine them to the allowed roots, then read."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from handlers.errors import ApiError

MAX_FILENAME_CHARS = 4096


def is_encodable(text: str) -> bool:
    """False for text with lone surrogates, which JSON can carry ("\\ud800").

    os.path would raise UnicodeEncodeError on \\ud800 (a 500) and quietly map \\udc80 to the
    byte 0x80 (surrogateescape); neither names a file a client could have meant.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_allowed_path(filename: str, base_dir: str, roots: list[Path]) -> Path:
    """The real path of `filename` if it lies inside one of `roots`.

    Symlinks and `..` are resolved first, so nothing can point out of a root. The
    answer for a path outside the roots never depends on whether it exists.
    """
    if "\x00" in filename:
        raise ApiError(400, "invalid_filename", "filename contains a NUL byte")
    if len(filename) > MAX_FILENAME_CHARS:
        raise ApiError(400, "invalid_filename", f"filename is longer than {MAX_FILENAME_CHARS} characters")
    if not is_encodable(filename):
        raise ApiError(400, "invalid_filename", "filename holds a lone surrogate (not valid Unicode text)")
    real = os.path.realpath(os.path.join(base_dir, filename))
    for root in roots:
        if real == str(root) or real.startswith(str(root) + os.sep):
            return Path(real)
    raise ApiError(403, "forbidden_path", "filename is outside the folders this server may read")


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """Read a regular file of at most `max_bytes` (blocking: run it off the event loop)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ApiError(400, "not_a_file", "filename does not name a regular file")
        if info.st_size > max_bytes:
            raise ApiError(413, "file_too_large", f"the file is larger than the {max_bytes}-byte limit")
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ApiError(404, "file_not_found", "no such file") from None
    except NotADirectoryError:
        raise ApiError(404, "file_not_found", "no such file") from None
    except PermissionError:
        raise ApiError(403, "forbidden_path", "the server may not read this file") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ApiError(400, "invalid_filename", "filename is too long") from None
        raise ApiError(400, "unreadable_file", f"cannot read the file: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ApiError(413, "file_too_large", f"the file is larger than the {max_bytes}-byte limit")
    return data
