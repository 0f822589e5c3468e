"""Atomic file writes, used for everything that persists (caches, checkpoints, tables, CAMs).

A file is written under a hidden temporary name (``.tmp-*``) in its own folder, flushed to disk,
then moved over the final name with ``os.replace``. A killed process therefore leaves either the
old file or the new one under the final name, never a part of one; at worst a ``.tmp-*`` file
remains, which ``remove_temporaries`` clears.

A write that the system refuses (a full disk, ENOSPC; a quota, EDQUOT; a read-only or
unreachable folder) is a ``WriteError``: one line naming the destination and the reason. The
temporary file is removed and the file already under the final name (a previous checkpoint, a
cache entry) is left exactly as it was.
"""
import contextlib
import errno
import glob
import hashlib
import os
import tempfile

from data.errors import InputError

TMP_PREFIX = ".tmp-"
# errno -> what the message says; any other OSError of the write gives its own strerror.
_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}


class WriteError(InputError):
    """A file could not be written (disk full, quota, permissions): the message names it."""


def write_error(path, error):
    """The one-line WriteError of ``error`` (an OSError) while writing ``path``."""
    code = error.errno
    name = errno.errorcode.get(code, "errno {}".format(code)) if code else type(error).__name__
    reason = _REASONS.get(code) or (error.strerror or str(error)).lower()
    kept = "; the previous file there is unchanged" if os.path.exists(path) else ""
    return WriteError("{}: not written: {} ({}){}".format(path, reason, name, kept))


def _about_other_file(error, path, tmp):
    """True when ``error`` names a file other than the one being written (a source a writer
    reads, say): that is not a failure to write ``path``, and keeps its own message."""
    names = [n for n in (error.filename, getattr(error, "filename2", None)) if n]
    ours = {os.path.abspath(path), os.path.abspath(tmp)}
    return any(os.path.abspath(os.fspath(n)) not in ours for n in names
               if isinstance(n, (str, bytes, os.PathLike)))


def _temporary_beside(path):
    """A new empty temporary file in ``path``'s folder (made if need be), with its extension."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX,
                                   suffix=os.path.splitext(path)[1])
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path`` (same extension, so writers that pick a format by
    extension still work); on success it replaces ``path``, on any error it is removed. An
    OSError of the write itself (disk full, ...) becomes a WriteError naming ``path``."""
    tmp = _temporary_beside(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp makes the file private; results are for everyone
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if _about_other_file(e, path, tmp):
            raise
        raise write_error(path, e) from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    """Removes a temporary file if it is there (removing frees space on a full disk too)."""
    try:
        os.remove(tmp)
    except OSError:   # gone already, or the folder itself went away: nothing to clear
        pass


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def atomic_write_csv(df, path):
    """A pandas DataFrame as CSV, without its index."""
    return atomic_write_text(path, df.to_csv(index=False))


def remove_temporaries(folder):
    """Removes the ``.tmp-*`` leftovers of killed writers in ``folder``."""
    for p in glob.glob(os.path.join(folder, TMP_PREFIX + "*")):
        try:
            os.remove(p)
        except OSError:
            pass


def file_stem(name):
    """``name`` as a file-name stem: every character but letters, digits, '-', '_' and '.'
    becomes '_' (a slide id such as 'a/b c' must not name a folder or need quoting)."""
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(name))


def sha256_file(path):
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
