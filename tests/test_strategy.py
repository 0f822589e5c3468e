"""model.strategy: `auto` streams on a GPU too, with a tile chosen from memory in one place, and
a whole-image step that cannot fit host RAM is refused up front, in one line.

The GPU is a fake ``nvidia-smi`` on PATH that answers the memory query the code makes
(memory.total in MiB per ``-i`` index); host RAM is the real psutil figure.
"""
import json
import math
import os
import stat
import subprocess
import sys

import psutil
import pytest
import yaml

from model import strategy
from model.config import ConfigError, load_config
from model.resnet import MARGIN, OUTPUT_STRIDE
from model.strategy import tile_for_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = os.path.join(ROOT, "configs", "paper.yaml")
MIB = 1024 * 1024
GPU_MIB = {"0": 81920, "1": 40960}     # an 80 GB and a 40 GB card

FAKE_NVIDIA_SMI = """#!/bin/sh
# memory.total (MiB) of GPU -i N, as `nvidia-smi --query-gpu=memory.total
# --format=csv,noheader,nounits -i N` prints it; any other question fails
for wanted in --query-gpu=memory.total --format=csv,noheader,nounits; do
  case " $* " in *" $wanted "*) ;;
    *) echo "fake nvidia-smi: unexpected arguments: $*" >&2; exit 9;; esac
done
while [ $# -gt 0 ]; do [ "$1" = "-i" ] && index=$2; shift; done
case "$index" in
{cases}  *) echo "No devices were found" >&2; exit 6;;
esac
"""


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """Puts a fake nvidia-smi first on PATH (GPU 0: 81,920 MiB, GPU 1: 40,960 MiB)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI.format(cases="".join(
        "  {}) echo {};;\n".format(i, m) for i, m in GPU_MIB.items())))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", "{}{}{}".format(folder, os.pathsep, os.environ["PATH"]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return str(folder)


@pytest.fixture
def no_gpu(monkeypatch):
    """Hides any GPU (a real one included) the way CUDA does: CUDA_VISIBLE_DEVICES=-1."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")


def _gpu_tile(mib, training=True):
    return tile_for_memory(mib * MIB * strategy.GPU_SHARE / 1e9, MARGIN, training)


def _write(tmp_path, train, canvas=21500, name="c.yaml"):
    path = str(tmp_path / name)
    with open(path, "w") as f:
        yaml.safe_dump({"data": {"cache": str(tmp_path / "cache"), "target_mpp": 2.28,
                                 "canvas": canvas},
                        "model": {"weights": "none"}, "train": dict(batch_size=1, **train),
                        "out": str(tmp_path / "out")}, f)
    return path


def test_paper_config_streams_on_a_gpu_with_a_tile_from_its_memory(fake_gpu, tiny_model):
    cfg = load_config(PAPER, world_size=8)
    t, d = cfg["train"], cfg["data"]
    assert t["tile"] is None and t["memory_gb"] is None     # one default: from memory
    assert strategy.resolve(t["strategy"]) == "streaming"
    lines = []
    # eagerly: streaming in levels, its kept activations within the GPU's share
    made = strategy.make_strategy(t["strategy"], tiny_model, tile=t["tile"],
                                  memory_gb=t["memory_gb"], canvas=d["canvas"],
                                  mpp=d["target_mpp"], log=lines.append, rank_on_node=0,
                                  ranks_on_node=8)
    assert type(made).__name__ == "LevelStreaming" and made.tile is None
    budget = GPU_MIB["0"] * MIB * strategy.GPU_SHARE
    assert made.memory_bytes == pytest.approx(budget - strategy.BASE_BYTES)
    assert lines == ["streaming: in levels at 2.28 um/px, activations kept within {:.1f} GB "
                     "({:.1f} GB = GPU 0 memory 85.9 GB (nvidia-smi) x {:g} less 1.5 GB for the "
                     "runtime)".format((budget - strategy.BASE_BYTES) / 1e9, budget / 1e9,
                                       strategy.GPU_SHARE)]
    # tile by tile (TF1's graph mode, or asked for): the tile that fits the GPU's share
    lines = []
    made = strategy.make_strategy(t["strategy"], tiny_model, tile=t["tile"],
                                  memory_gb=t["memory_gb"], canvas=d["canvas"],
                                  mpp=d["target_mpp"], log=lines.append, rank_on_node=0,
                                  ranks_on_node=8, engine="windows")
    assert type(made).__name__ == "Streaming"
    expected = _gpu_tile(GPU_MIB["0"])
    assert made.tile == expected and expected % 32 == 0
    # the step fits the GPU's share; a whole-canvas step would need ~10x the card
    window = expected + 2 * MARGIN
    assert strategy.BASE_BYTES + strategy.TRAIN_BYTES_PER_PIXEL * window ** 2 <= budget
    assert strategy.TRAIN_BYTES_PER_PIXEL * d["canvas"] ** 2 > 9 * GPU_MIB["0"] * MIB
    assert lines == [made.tile_choice.line(d["target_mpp"])]
    assert lines[0].startswith("streaming: tile {} px at 2.28 um/px".format(expected))
    assert "windows <= {} px".format(window) in lines[0]
    assert "GPU 0 memory 85.9 GB (nvidia-smi) x {:g}".format(strategy.GPU_SHARE) in lines[0]
    with pytest.raises(ValueError, match="engine must be levels or windows"):
        strategy.make_strategy("streaming", tiny_model, engine="tiles")
    # an option only the one-level design has chooses it when set, not when left at None
    assert type(strategy.make_strategy("streaming", tiny_model, memory_gb=4, margin=None)
                ).__name__ == "LevelStreaming"
    assert type(strategy.make_strategy("streaming", tiny_model, tile=64, margin=256)
                ).__name__ == "Streaming"


def test_each_rank_reads_its_own_gpu(fake_gpu, monkeypatch):
    first = strategy.choose_tile(canvas=21500, rank_on_node=0)
    second = strategy.choose_tile(canvas=21500, rank_on_node=1)
    assert (first.tile, second.tile) == (_gpu_tile(GPU_MIB["0"]), _gpu_tile(GPU_MIB["1"]))
    assert second.tile < first.tile and "GPU 1 memory 42.9 GB" in second.source
    # nvidia-smi ignores CUDA_VISIBLE_DEVICES: the first visible GPU here is physical GPU 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert strategy.choose_tile(canvas=21500, rank_on_node=0).tile == second.tile
    # the launcher's local rank is the default
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert strategy.choose_tile(canvas=21500).tile == second.tile


def test_prediction_prints_its_budget_too(fake_gpu, tiny_model, capfd):
    from model.inference import Predictor
    predictor = Predictor(tiny_model, config=PAPER)
    budget = GPU_MIB["0"] * MIB * strategy.GPU_SHARE - strategy.BASE_BYTES
    assert predictor.strategy.memory_bytes == pytest.approx(budget)
    err = capfd.readouterr().err
    assert "streaming: in levels at 2.28 um/px, activations kept within {:.1f} GB".format(
        budget / 1e9) in err


def test_memory_gb_picks_the_tile(tmp_path, fake_gpu):
    tiles = []
    for memory_gb in (6, 20):
        cfg = load_config(_write(tmp_path, {"memory_gb": memory_gb}))
        t = cfg["train"]
        choice = strategy.choose_tile(t["tile"], t["memory_gb"], cfg["data"]["canvas"])
        assert choice.tile == tile_for_memory(memory_gb)          # not the GPU's
        assert choice.source == "train.memory_gb = {} GB".format(memory_gb)
        tiles.append(choice.tile)
    assert tiles[0] < tiles[1]


def test_an_explicit_tile_wins_and_tile_with_memory_gb_is_refused(tmp_path, fake_gpu):
    cfg = load_config(_write(tmp_path, {"tile": 1024}))
    choice = strategy.choose_tile(cfg["train"]["tile"], cfg["train"]["memory_gb"], 21500)
    assert (choice.tile, choice.source) == (1024, "train.tile")
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, {"tile": 1024, "memory_gb": 12}))
    assert "train.tile, train.memory_gb" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="set one"):
        strategy.choose_tile(1024, 12)


def test_the_tile_is_capped_at_what_the_canvas_needs(fake_gpu):
    # 2,000 - 2 x 256 margin = 1,488 px, rounded up to 32: one 2,016 px window covers the canvas
    choice = strategy.choose_tile(canvas=2000)
    assert choice.tile == 1504 and choice.uncapped == _gpu_tile(GPU_MIB["0"])
    assert "capped from {} px".format(choice.uncapped) in choice.line()
    assert strategy.choose_tile(4096, canvas=256).tile == 32
    uncapped = strategy.choose_tile(1024, canvas=21500)
    assert uncapped.uncapped is None and "capped" not in uncapped.line()


def test_a_cpu_takes_host_ram_shared_by_the_ranks_on_its_node(no_gpu, monkeypatch):
    host = psutil.virtual_memory().total
    chosen = {}
    for ranks in (1, 2):
        monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(ranks))
        budget_gb = host / ranks * strategy.HOST_SHARE / 1e9
        try:
            expected = tile_for_memory(budget_gb)
        except ValueError:      # a small machine: too little RAM for a tile, said in one line
            with pytest.raises(ValueError, match="host RAM"):
                strategy.choose_tile()
            continue
        choice = strategy.choose_tile()
        assert choice.tile == expected
        assert "host RAM {:.1f} GB / {} rank".format(host / 1e9, ranks) in choice.source
        chosen[ranks] = choice.tile
        assert strategy.choose_tile(ranks_on_node=ranks).tile == expected
    if len(chosen) == 2:
        assert chosen[2] < chosen[1]


def test_unified_memory_only_for_the_unified_strategy():
    pytest.importorskip("tensorflow")
    from model import gpu
    gib = 1024 ** 3
    assert not gpu.session_config(512 * gib, 32 * gib).gpu_options.experimental.use_unified_memory
    assert gpu.session_config(512 * gib, 32 * gib,
                              unified=True).gpu_options.experimental.use_unified_memory


def test_unified_at_paper_scale_is_refused_up_front_in_one_line(tmp_path):
    canvas = 21500
    need = strategy.BASE_BYTES + strategy.TRAIN_BYTES_PER_PIXEL * canvas ** 2
    host = psutil.virtual_memory().total
    if host >= need:
        pytest.skip("this machine has {:.0f} GB of RAM: the unified step fits".format(host / 1e9))
    path = _write(tmp_path, {"strategy": "unified"}, canvas=canvas)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_COMM_WORLD")}
    done = subprocess.run([sys.executable, "-m", "reproduce", "train", "--config", path],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, env=env)
    err = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: {}: train.strategy unified".format(path))
    assert "{:.1f} GB".format(need / 1e9) in err and "{:.1f} GB".format(host / 1e9) in err
    assert "streaming" in err
    # before the data: the config names no manifest, which loading the cohort would refuse
    assert "manifest" not in err and not os.path.exists(str(tmp_path / "out"))


def test_bench_plans_with_the_same_tile(fake_gpu):
    done = subprocess.run([sys.executable, "-m", "reproduce", "bench", "--size", "21500",
                           "--content", "300x200", "--plan-only", "--rotate", "0"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the plan in levels takes the GPU's share, less the runtime, as its budget
    budget = GPU_MIB["0"] * MIB * strategy.GPU_SHARE - strategy.BASE_BYTES
    assert result["tile"] is None
    assert result["memory_budget_gb"] == pytest.approx(budget / 1e9, abs=0.01)
    assert "streaming: in levels" in done.stderr and "(nvidia-smi)" in done.stderr
    both = subprocess.run([sys.executable, "-m", "reproduce", "bench", "--size", "4096",
                           "--mode", "windows", "--tile", "1024", "--memory-gb", "12"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert both.returncode == 2 and both.stderr.strip().startswith("error: --tile and --memory-gb")


def test_tile_for_memory_grows_with_budget_and_refuses_too_little():
    small, large = tile_for_memory(6), tile_for_memory(12)
    assert small % 32 == 0 and large > small
    assert tile_for_memory(12, training=False) > large
    with pytest.raises(ValueError):
        tile_for_memory(1.0)


@pytest.mark.parametrize("training", [True, False])
def test_one_memory_model_for_every_step(training):
    """step_bytes is the formula that the tile and the whole-image check both use."""
    per_pixel = strategy.bytes_per_pixel(training)
    for pixels in (0, 2016 ** 2, float(21500) ** 2):
        assert strategy.step_bytes(pixels, training) == strategy.BASE_BYTES + per_pixel * pixels
    # the largest window that fits a budget, and one row of cells more that does not
    tile = tile_for_memory(12, training=training)
    assert strategy.step_bytes((tile + 2 * MARGIN) ** 2, training) <= 12e9
    assert strategy.step_bytes((tile + OUTPUT_STRIDE + 2 * MARGIN) ** 2, training) > 12e9
    # a canvas whose step needs more than the host's RAM is refused, one that fits is not
    need = strategy.step_bytes(float(4096) ** 2, training)
    strategy.check_memory("direct", 4096, training, host_ram=need, ranks=1)
    with pytest.raises(strategy.StrategyError):
        strategy.check_memory("direct", 4096, training, host_ram=need - 1, ranks=1)


def test_levels_keep_their_maps():
    """Today's streaming is one level and keeps no map; a split adds the maps it keeps (float32,
    and their gradients when training) over the region grown by the next level's margin."""
    from model.resnet import FEATURES
    window = 2016 ** 2
    single = strategy.Level(OUTPUT_STRIDE, FEATURES, MARGIN)
    assert strategy.step_bytes(window, levels=[single]) == strategy.step_bytes(window)
    first, rest = strategy.Level(8, 512, 32), strategy.Level(32, 2048, 224)
    region = 8000 * 12000
    side = region ** 0.5 + 2 * 224        # the region as a square, grown by the next margin
    kept = 4 * 512 * math.ceil(side / 8) ** 2
    assert strategy.step_bytes(window, True, [first, rest], region_px=region) == pytest.approx(
        strategy.step_bytes(window) + 2 * kept)
    assert strategy.step_bytes(window, False, [first, rest], region_px=region) == pytest.approx(
        strategy.step_bytes(window, False) + kept)
    # a stride-4 map of stage 2 plus its gradient, on a paper-sized slide: about 12 GB
    stage2 = strategy.Level(4, 256, 17)
    assert stage2.map_bytes(7900 * 12300) / 1e9 == pytest.approx(12.4, abs=0.1)


def test_the_memory_model_loads_no_tensorflow():
    code = ("import sys; from model import strategy; strategy.choose_tile(memory_gb=12); "
            "strategy.check_memory('direct', 1024, host_ram=1e12); "
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
