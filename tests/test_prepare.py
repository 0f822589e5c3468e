"""`reproduce prepare` and data.cache: contents, resume after kill -9, and two MPI ranks."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from data.cache import CacheError, load_index, read_cached
from data.nodes import crop_node
from data.slide import read_slide
from reproduce.__main__ import main
from tests.conftest import aperio_tiff, pyramid, tissue, write_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIANGLE = {"type": "Feature", "geometry": {"type": "Polygon",
                                            "coordinates": [[[40, 30], [500, 60], [200, 420]]]}}


def _cohort(folder, n=3):
    """n small pyramidal slides + one node row (a triangle on slide 0); returns the manifest."""
    lines = ["slide_id,path,label,split,size_category,level,annotation"]
    splits = ["train", "val", "test"]
    for i in range(n):
        aperio_tiff(folder / "s{}.svs".format(i), pyramid(tissue(600, 720, seed=i), 2), mpp=0.25)
        lines.append("s{0},s{0}.svs,{1},{2},{3},slide,".format(
            i, i % 2, splits[i % 3], "micro" if i % 2 else "negative"))
    (folder / "node.geojson").write_text(json.dumps(TRIANGLE))
    lines.append("n0,s0.svs,0,train,negative,node,node.geojson")
    return write_lines(folder / "manifest.csv", lines)


def _summary(capsys):
    """The JSON line that `reproduce prepare` printed last."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _prepared(capsys, manifest, cache):
    """`reproduce prepare` at 0.6 um/px without a progress bar: succeeds; returns its summary."""
    assert main(["prepare", "--manifest", manifest, "--out", cache, "--target-mpp", "0.6",
                 "--no-progress"]) == 0
    return _summary(capsys)


def test_cache_equals_direct_reads_and_rerun_skips(tmp_path, capsys):
    manifest = _cohort(tmp_path)
    cache = str(tmp_path / "cache")
    summary = _prepared(capsys, manifest, cache)
    index = load_index(cache)
    assert list(index["slide_id"]) == ["s0", "s1", "s2", "n0"]
    for col in ("size_category", "level", "annotation", "cache_file", "height", "width", "mpp",
                "slide_mpp"):
        assert col in index.columns
    assert (index["mpp"] == 0.6).all() and (index["slide_mpp"] == 0.25).all()
    for _, row in index.iterrows():
        image = read_cached(cache, row)
        assert image.shape == (row["height"], row["width"], 3)
        if row["level"] == "node":
            want = crop_node(str(tmp_path / "s0.svs"), str(tmp_path / "node.geojson"), 0.6)
        else:
            want = read_slide(row["path"], 0.6)
        assert np.array_equal(image, want)  # PNG is lossless: exact
    assert np.array_equal(read_cached(cache, "s1"), read_slide(str(tmp_path / "s1.svs"), 0.6))
    assert list(load_index(cache, split="train")["slide_id"]) == ["s0", "n0"]
    assert summary["cached"] == 4 and summary["level0_megapixels_per_s"] > 0

    mtimes = {f: os.stat(f).st_mtime_ns for f in index["cache_file"]}
    summary = _prepared(capsys, manifest, cache)
    assert (summary["cached"], summary["skipped"]) == (0, 4)
    assert all(os.stat(f).st_mtime_ns == t for f, t in mtimes.items())
    # a damaged cache file is found by its size check and redone
    first = index["cache_file"][0]
    with open(first, "r+b") as f:
        f.seek(16)
        f.write(b"\x00\x00\x00\x07")
    with pytest.raises(CacheError):
        read_cached(cache, "s0")
    summary = _prepared(capsys, manifest, cache)
    assert (summary["cached"], summary["skipped"]) == (1, 3)
    assert np.array_equal(read_cached(cache, "s0"), read_slide(str(tmp_path / "s0.svs"), 0.6))
    # a slide rewritten under the same path (a regenerated cohort) is read again, with its node
    aperio_tiff(tmp_path / "s0.svs", pyramid(tissue(600, 720, seed=99), 2), mpp=0.25)
    summary = _prepared(capsys, manifest, cache)
    assert (summary["cached"], summary["skipped"]) == (2, 2)
    assert np.array_equal(read_cached(cache, "s0"), read_slide(str(tmp_path / "s0.svs"), 0.6))


def test_bad_manifest_lists_every_problem_exit_2(tmp_path, capsys):
    aperio_tiff(tmp_path / "ok.svs", [tissue(64, 64)], mpp=0.25)
    (tmp_path / "m.csv").write_text("slide_id,path,label,split\n"
                                    "a,ok.svs,3,train\n"
                                    "b,gone.svs,0,test\n"
                                    "b,ok.svs,1,val\n")
    cache = tmp_path / "cache"
    rc = main(["prepare", "--manifest", str(tmp_path / "m.csv"), "--out", str(cache)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "label '3'" in err and "gone.svs" in err and "duplicate slide_id" in err
    assert "also in 'train'" in err and "Traceback" not in err
    assert not (cache / "index.csv").exists()


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _slow_cohort(folder, n):
    """n copies of one 2400x2400 single-level slide (~0.5 s each to read at 0.5 µm/px)."""
    aperio_tiff(folder / "big0.svs", [tissue(2400, 2400)], mpp=0.25, tile=256)
    lines = ["slide_id,path,label,split"]
    for i in range(n):
        if i:
            shutil.copyfile(str(folder / "big0.svs"), str(folder / "big{}.svs".format(i)))
        lines.append("big{0},big{0}.svs,{1},train".format(i, i % 2))
    return write_lines(folder / "m.csv", lines)


def test_kill_9_mid_run_then_resume(tmp_path):
    n = 6
    manifest = _slow_cohort(tmp_path, n)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "reproduce", "prepare", "--manifest", manifest, "--out",
           str(cache), "--target-mpp", "0.5", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    index = cache / "index.csv"
    deadline = time.time() + 120
    while not index.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare ended before it could be killed"
    # What is visible under final names is whole: the index parses, its files decode.
    done = pd.read_csv(str(index), dtype=str)
    assert 1 <= len(done) < n
    finals = [f for f in os.listdir(str(cache)) if not f.startswith(".")]
    assert set(finals) <= {"index.csv"} | {"big{}.png".format(i) for i in range(n)}
    reference = read_slide(str(tmp_path / "big0.svs"), 0.5)
    for name in finals:
        if name.endswith(".png"):  # written but maybe not yet indexed: still complete
            from data.cache import read_image
            assert np.array_equal(read_image(str(cache / name)), reference)
    before = {f: os.stat(str(cache / f)).st_mtime_ns for f in done["cache_file"]}

    rc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=300).returncode
    assert rc == 0
    final = load_index(str(cache))
    assert sorted(final["slide_id"]) == sorted("big{}".format(i) for i in range(n))
    for _, row in final.iterrows():
        assert np.array_equal(read_cached(str(cache), row), reference)
    assert all(os.stat(str(cache / f)).st_mtime_ns == t for f, t in before.items())  # skipped
    assert not [f for f in os.listdir(str(cache)) if f.startswith(".")]  # temp files cleaned


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (OpenMPI) not installed")
def test_two_mpi_ranks(tmp_path):
    manifest = _cohort(tmp_path, n=4)
    cache = tmp_path / "cache"
    cmd = ["mpirun", "-np", "2", "--oversubscribe", "--allow-run-as-root", sys.executable,
           "-m", "reproduce", "prepare", "--manifest", manifest, "--out", str(cache),
           "--target-mpp", "0.6", "--no-progress"]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=240, universal_newlines=True)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    assert len(p.stdout.strip().splitlines()) == 1
    assert summary["ranks"] == 2 and summary["per_rank"] == [3, 2]  # rows r::2 of 5
    index = load_index(str(cache))
    assert list(index["slide_id"]) == ["s0", "s1", "s2", "s3", "n0"]  # manifest order
    assert not list(cache.glob("index.part-*.csv"))
    for _, row in index.iterrows():
        if row["level"] == "slide":
            assert np.array_equal(read_cached(str(cache), row), read_slide(row["path"], 0.6))
    node = crop_node(str(tmp_path / "s0.svs"), str(tmp_path / "node.geojson"), 0.6)
    assert np.array_equal(read_cached(str(cache), "n0"), node)


def test_resample_filter_is_recorded_and_a_change_reprepares(tmp_path, capsys):
    from data.cache import check_made_with
    manifest = _cohort(tmp_path, n=2)
    cache = str(tmp_path / "cache")
    args = ["prepare", "--manifest", manifest, "--out", cache, "--target-mpp", "0.6",
            "--no-progress"]
    assert main(args) == 0                                   # default: area
    assert _summary(capsys)["resample"] == "area"
    index = load_index(cache)
    assert (index["resample"] == "area").all()
    area = read_cached(cache, "s0")
    check_made_with(index, cache, target_mpp=0.6, resample="area")
    with pytest.raises(CacheError, match="resampled with 'area', not data.resample 'cubic'"):
        check_made_with(index, cache, resample="cubic")

    assert main(args + ["--resample", "cubic"]) == 0         # another filter: read again
    s = _summary(capsys)
    assert (s["cached"], s["skipped"], s["resample"]) == (3, 0, "cubic")
    index = load_index(cache)
    assert (index["resample"] == "cubic").all()
    cubic = read_cached(cache, "s0")
    assert np.array_equal(cubic, read_slide(str(tmp_path / "s0.svs"), 0.6, resample="cubic"))
    assert cubic.shape == area.shape and not np.array_equal(cubic, area)
    node = read_cached(cache, "n0")
    assert np.array_equal(node, crop_node(str(tmp_path / "s0.svs"), str(tmp_path / "node.geojson"),
                                          0.6, resample="cubic"))
    assert main(args + ["--resample", "cubic"]) == 0         # same filter: nothing to do
    assert (_summary(capsys)["skipped"]) == 3

    # an index written before the column existed was made with area, the only filter then:
    # kept for area, read again for cubic
    assert main(args) == 0
    assert _summary(capsys)["cached"] == 3
    raw = pd.read_csv(os.path.join(cache, "index.csv"), dtype=str, keep_default_na=False)
    raw.drop(columns="resample").to_csv(os.path.join(cache, "index.csv"), index=False)
    assert (load_index(cache)["resample"] == "area").all()
    assert main(args) == 0
    assert _summary(capsys)["skipped"] == 3
    assert main(args + ["--resample", "cubic"]) == 0
    assert _summary(capsys)["cached"] == 3


def test_prepare_takes_cache_mpp_and_filter_from_the_config(tmp_path, capsys):
    manifest = _cohort(tmp_path, n=2)
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  cache: {}\n  target_mpp: 0.75\n  canvas: 512\n"
                      "  resample: cubic\nout: {}\n".format(tmp_path / "cache", tmp_path / "run"))
    assert main(["prepare", "--config", str(config), "--manifest", manifest,
                 "--no-progress"]) == 0
    s = _summary(capsys)
    assert (s["resample"], s["target_mpp"], s["cached"]) == ("cubic", 0.75, 3)
    index = load_index(str(tmp_path / "cache"))
    assert (index["resample"] == "cubic").all() and (index["mpp"] == 0.75).all()
    # a flag wins over the config
    assert main(["prepare", "--config", str(config), "--manifest", manifest, "--resample",
                 "area", "--no-progress"]) == 0
    assert _summary(capsys)["resample"] == "area"
    config.write_text(config.read_text().replace("cubic", "bilinear"))
    assert main(["prepare", "--config", str(config), "--manifest", manifest]) == 2
    assert "data.resample: must be one of area, cubic" in capsys.readouterr().err
