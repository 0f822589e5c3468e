"""data.files: a failed write leaves the old file and no temporary behind."""
import errno
import os
import shutil

import pandas as pd
import pytest

from data.errors import InputError
from data.files import TMP_PREFIX, WriteError, atomic_path, atomic_write_csv, \
    atomic_write_text, remove_temporaries


def test_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "table.md")
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            assert os.path.basename(tmp).startswith(TMP_PREFIX) and tmp.endswith(".md")
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == "old"
    assert sorted(os.listdir(str(tmp_path))) == ["table.md"]


def test_writes_replace_and_leftovers_are_cleared(tmp_path):
    path = str(tmp_path / "sub" / "x.csv")
    atomic_write_csv(pd.DataFrame({"a": [1, 2]}), path)
    atomic_write_csv(pd.DataFrame({"a": [3]}), path)
    assert list(pd.read_csv(path)["a"]) == [3]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    leftover = tmp_path / "sub" / (TMP_PREFIX + "dead.csv")
    leftover.write_text("from a killed writer")
    remove_temporaries(str(tmp_path / "sub"))
    assert sorted(os.listdir(str(tmp_path / "sub"))) == ["x.csv"]


def test_a_refused_write_is_one_line_naming_the_file(tmp_path):
    """The system's refusals (here a quota, raised by the writer) become a WriteError (an
    InputError: the command line prints it in one line) naming the destination; the old file
    stays and the temporary goes. (A real full disk: tests/test_faults.py.)"""
    path = str(tmp_path / "index.csv")
    atomic_write_text(path, "old")
    with pytest.raises(WriteError) as e:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert isinstance(e.value, InputError)
    assert str(e.value) == "{}: not written: the disk quota is exceeded (EDQUOT); the previous " \
                           "file there is unchanged".format(path)
    assert open(path).read() == "old" and sorted(os.listdir(str(tmp_path))) == ["index.csv"]

    blocked = str(tmp_path / "index.csv" / "x.csv")        # its folder is a file
    with pytest.raises(WriteError) as e:
        atomic_write_text(blocked, "new")
    assert str(e.value).startswith(blocked + ": not written: ")


def test_an_error_about_another_file_keeps_its_own_message(tmp_path):
    """A writer that fails to read its source has not failed to write: its error passes as it
    is (and the temporary still goes)."""
    with pytest.raises(FileNotFoundError):
        with atomic_path(str(tmp_path / "copy.txt")) as tmp:
            shutil.copyfile(str(tmp_path / "missing.txt"), tmp)
    assert os.listdir(str(tmp_path)) == []
