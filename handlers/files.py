"""Server-side `filename` requests: confine them to the allowed roots, then read."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ConfinedPath:
    """A filename resolved inside an allowed root: the root, and the components below it."""

    root: Path
    parts: tuple[str, ...]
    # The name ended in "/", "/." or "/..": as for the kernel, only a folder answers it.
    folder: bool = False

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)


def resolve_allowed_path(filename: str, base_dir: str, roots: list[Path]) -> ConfinedPath:
    """Where `filename` really lies, if inside one of `roots`.

    Symlinks and `..` are resolved first, so nothing can point out of a root. The
    answer for a path outside the roots never depends on whether it exists.
    """
    if "\x00" in filename:
        raise ApiError(400, "invalid_filename", "filename contains a NUL byte")
    if len(filename) > MAX_FILENAME_CHARS:
        raise ApiError(400, "invalid_filename", f"filename is longer than {MAX_FILENAME_CHARS} characters")
    if not is_encodable(filename):
        raise ApiError(400, "invalid_filename", "filename holds a lone surrogate (not valid Unicode text)")
    joined = os.path.join(base_dir, filename)
    real = real_path(joined)
    root = root_of(real, roots)
    if root is None:
        raise forbidden()
    refuse_climbs_out_of_non_folders(joined, roots)
    return ConfinedPath(root, Path(real).relative_to(root).parts, names_a_folder(filename))


def root_of(real: str, roots: list[Path]) -> Path | None:
    """The root a resolved path lies in, if any."""
    for root in roots:
        if real == str(root) or real.startswith(str(root) + os.sep):
            return root
    return None


def refuse_climbs_out_of_non_folders(path: str, roots: list[Path]) -> None:
    """A `..` after a name that is no folder: open(2) answers ENOTDIR (a file) or ENOENT
    (nothing there) where realpath just steps back ("a.png/../b.png" read b.png). Only names
    inside a root are looked at, so that the answer never tells what exists outside them."""
    parts = path.split(os.sep)
    for index, part in enumerate(parts):
        if part != os.pardir or index == 0:
            continue
        before = real_path(os.sep.join(parts[:index]) or os.sep)
        if root_of(before, roots) is None:
            continue
        with _as_api_errors():
            if not stat.S_ISDIR(os.stat(before).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), before)


def names_a_folder(filename: str) -> bool:
    """Whether `filename` can only name a folder: it ends in "/", "/." or "/..".

    realpath drops such an ending ("a.png/" resolves to a.png), where the kernel answers
    ENOTDIR for a file: the flag keeps that meaning for the open.
    """
    return filename.endswith(os.sep) or os.path.basename(filename) in (os.curdir, os.pardir)


def real_path(path: str) -> str:
    """os.path.realpath, refusing what it cannot resolve rather than failing with a 500.

    It follows a chain of symlinks one stack frame per link, so a chain of ~1000 links (which
    anyone who may write into a root can make) raised RecursionError; the kernel gives up after
    40. A link swapped for a file between its lstat and readlink raises OSError. Where either
    leads is unknown, so the answer is the one for a path outside the roots.
    """
    try:
        return os.path.realpath(path)
    except (RecursionError, OSError):
        raise forbidden() from None


def forbidden() -> ApiError:
    return ApiError(403, "forbidden_path", "filename is outside the folders this server may read")


# Never follow a symlink, never wait on a FIFO or device, never leak the descriptor to a child.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_confined(target: ConfinedPath) -> int:
    """A descriptor for `target`, opened one component at a time from its root.

    The check in resolve_allowed_path saw no symlink below the root; one swapped in since
    (a race) is refused here instead of followed, and a FIFO swapped in opens without
    blocking (O_NONBLOCK) so the caller's fstat can refuse it.
    """
    fd = os.open(target.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(target.parts):
            last = index == len(target.parts) - 1
            flags = (_FILE_FLAGS | (os.O_DIRECTORY if target.folder else 0)) if last else _DIR_FLAGS
            try:
                child = os.open(part, flags, dir_fd=fd)
            except NotADirectoryError:
                # O_DIRECTORY | O_NOFOLLOW on a symlink says ENOTDIR: name it as the symlink it is.
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _as_api_errors() -> Iterator[None]:
    """The OS's answers about a file, as the API's."""
    try:
        yield
    except FileNotFoundError:
        raise ApiError(404, "file_not_found", "no such file") from None
    except NotADirectoryError:
        # A file named as a folder: "a.png/", or "a.png/b.png".
        raise ApiError(404, "file_not_found", "no such file: a name followed by '/' is not a folder") from None
    except PermissionError:
        raise ApiError(403, "forbidden_path", "the server may not read this file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise forbidden() from None  # a symlink appeared after the check
        if exc.errno == errno.ENAMETOOLONG:
            raise ApiError(400, "invalid_filename", "filename is too long") from None
        raise ApiError(400, "unreadable_file", f"cannot read the file: {exc.strerror}") from None


@dataclass
class OpenedFile:
    """A regular file opened inside an allowed root, with its size when opened."""

    fd: int
    size: int

    def read(self, max_bytes: int) -> bytes:
        """At most `max_bytes` of it (blocking: run it off the event loop); closes it."""
        with _as_api_errors(), open(self.fd, "rb", closefd=True) as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ApiError(413, "file_too_large", f"the file is larger than the {max_bytes}-byte limit")
        return data

    def close(self) -> None:
        """For a file not read after all (read() closes it)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def open_image_file(target: ConfinedPath, max_bytes: int) -> OpenedFile:
    """Open a regular file of at most `max_bytes` (blocking: run it off the event loop)."""
    with _as_api_errors():
        fd = open_confined(target)
        try:
            # What was opened is what is checked: no window for a swap between stat and open.
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ApiError(400, "not_a_file", "filename does not name a regular file")
            if info.st_size > max_bytes:
                raise ApiError(413, "file_too_large", f"the file is larger than the {max_bytes}-byte limit")
        except BaseException:
            os.close(fd)
            raise
    return OpenedFile(fd, info.st_size)


def open_allowed_file(filename: str, base_dir: str, roots: list[Path], max_bytes: int) -> OpenedFile:
    """resolve_allowed_path, then open_image_file: both touch the file system (a stat per
    path component, slow on a network share), so both run off the event loop."""
    return open_image_file(resolve_allowed_path(filename, base_dir, roots), max_bytes)
