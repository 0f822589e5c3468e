"""data.files: a failed write leaves the old file and no temporary behind."""
import os

import pandas as pd
import pytest

from data.files import TMP_PREFIX, atomic_path, atomic_write_csv, atomic_write_text, \
    remove_temporaries


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
