"""Atomic file writes, used for everything that persists (caches, checkpoints, tables, CAMs).

A file is written under a hidden temporary name (``.tmp-*``) in its own folder, flushed to disk,
then moved over the final name with ``os.replace``. A killed process therefore leaves either the
old file or the new one under the final name, never a part of one; at worst a ``.tmp-*`` file
remains, which ``remove_temporaries`` clears.
"""
import contextlib
import glob
import hashlib
import os
import tempfile

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path`` (same extension, so writers that pick a format by
    extension still work); on success it replaces ``path``, on any error it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp makes the file private; results are for everyone
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
