"""`reproduce demo` reduced: a tiny synthetic cohort, one short epoch on 2 mpirun ranks.

Checks that the stages connect (synth -> prepare -> train -> predict --cam -> table), that the
outputs exist, that a rerun skips the finished stages, and the table-only mode. The full demo
(AUC >= 0.90 on its synthetic test set) is too long for the test suite; see the README.
"""
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """data:
  manifest: null
  cache: {out}/cache
  target_mpp: 32.0
  canvas: 192
  translate_px: 8
model:
  weights: none
train:
  strategy: direct
  batch_size: 2
  learning_rate: 1.0e-4
  reduced_learning_rate: 1.0e-5
  iterations_per_epoch: 2
  patience: 1
  max_epochs: 1
  seed: 0
  checkpoint_every: 2
out: {out}/train
"""


def _demo(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "reproduce", "demo"] + list(args), cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (OpenMPI) not installed")
def test_demo_end_to_end_tiny(tmp_path):
    out = str(tmp_path / "demo")
    config = str(tmp_path / "tiny.yaml")
    with open(config, "w") as f:
        f.write(TINY.format(out=out))
    args = ["--out", out, "--np", "2", "--config", config, "--slides", "10", "--seed", "3",
            "--synth-args", "--mpp 8 --workers 1"]
    p = _demo(*args)
    assert p.returncode == 0, p.stdout[-3000:]
    # The mpirun line is printed for the user.
    assert "mpirun --allow-run-as-root --oversubscribe -np 2" in p.stdout
    manifest = pd.read_csv(os.path.join(out, "cohort", "manifest.csv"))
    pred = pd.read_csv(os.path.join(out, "predict", "predictions.csv"))
    test = manifest[manifest["split"] == "test"]
    assert list(pred["slide_id"]) == list(test["slide_id"])
    cams = [f for f in os.listdir(os.path.join(out, "predict", "cam")) if f.endswith(".png")]
    assert len(cams) == len(test)
    assert os.path.isfile(os.path.join(out, "train", "best.ckpt"))
    with open(os.path.join(out, "table", "table.md")) as f:
        table = f.read()
    assert "SYNTHETIC" in table
    # The test split's positive slide has a tumour focus: its CAM is measured against it.
    loc = pd.read_csv(os.path.join(out, "predict", "cam", "localisation.csv"))
    assert len(loc) >= 1 and set(loc["slide_id"]) <= set(test["slide_id"])
    assert "CAM localisation against tumour annotations" in table
    rows = pd.read_csv(os.path.join(out, "table", "table.csv"))
    assert (rows["group"] == "localisation").any()
    assert "table.md" in p.stdout and "CAMs:" in p.stdout
    for stage in ("synth", "prepare", "train", "predict", "table", "report"):
        assert os.path.isfile(os.path.join(out, ".stamps", stage + ".json")), stage
    # The last stage is the report; the demo's last line names it (tests/test_report.py checks
    # its content).
    report = os.path.join(out, "report.html")
    assert os.path.getsize(report) > 0
    assert os.path.abspath(report) in p.stdout.strip().splitlines()[-1]

    # A rerun skips every finished stage and still prints the table.
    again = _demo(*args)
    assert again.returncode == 0, again.stdout[-3000:]
    for stage in ("synth", "prepare", "train", "predict"):
        assert "[demo] {}: done before, skipped".format(stage) in again.stdout
    assert "mpirun" not in again.stdout.replace("--mpirun", "")

    # Table only, from the predictions (+ the manifest's subgroup columns).
    only = _demo("--out", str(tmp_path / "only"), "--predictions",
                 os.path.join(out, "predict", "predictions.csv"), "--manifest",
                 os.path.join(out, "cohort", "manifest.csv"))
    assert only.returncode == 0, only.stdout[-3000:]
    assert os.path.isfile(str(tmp_path / "only" / "table" / "table.md"))
    assert os.path.isfile(str(tmp_path / "only" / "report.html"))
    assert "[demo] synth" not in only.stdout and "[demo] train" not in only.stdout


def test_demo_bad_input_is_one_line(tmp_path):
    p = _demo("--out", str(tmp_path / "x"), "--predictions", str(tmp_path / "none.csv"))
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "none.csv" in lines[0]
    p = _demo("--out", str(tmp_path / "x"), "--config", str(tmp_path / "nope.yaml"))
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "nope.yaml" in lines[0]


def test_training_resumes_or_moves_other_runs_aside(tmp_path):
    """The train stage: same inputs and a last.ckpt -> --resume; other inputs -> moved aside."""
    from report.run import Runner
    config = tmp_path / "c.yaml"
    config.write_text("a: 1\n")
    run_dir = str(tmp_path / "train")
    runner = Runner(str(tmp_path))
    cmd = ["train", "--config", str(config)]
    assert runner.resumable(cmd, [str(config)], run_dir) == cmd      # fresh: marker written
    open(os.path.join(run_dir, "last.ckpt"), "w").close()               # ... then interrupted
    assert runner.resumable(cmd, [str(config)], run_dir) == cmd + ["--resume"]
    config.write_text("a: 2\n")                                         # the config changed
    assert runner.resumable(cmd, [str(config)], run_dir) == cmd
    assert not os.path.exists(os.path.join(run_dir, "last.ckpt"))
    assert [d for d in os.listdir(str(tmp_path)) if d.startswith("train.old-")]


def test_failed_training_hint_works_as_printed(tmp_path):
    """A training that dies after its first checkpoint: the printed command continues it."""
    import shlex
    from report.run import Runner, RunError, train_rerun
    from tests.test_train import make_cohort, write_config
    make_cohort(str(tmp_path / "cache"), n_train=2, n_val=2)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir, batch_size=1, iterations_per_epoch=2,
                          max_epochs=1, checkpoint_every=1)
    command = [sys.executable, "-m", "reproduce", "train", "--config", config]
    runner = Runner(str(tmp_path / "demo"))
    # Rank 0 exits before iteration 1, after the checkpoint of iteration 1.
    with pytest.raises(RunError) as e:
        runner.stage("train", command, env={"REPRODUCE_FAULT": "0:1:exit"},
                     rerun=train_rerun(command, str(run_dir)))
    assert os.path.isfile(str(run_dir / "last.ckpt"))
    hint = str(e.value).split("rerun it with: ", 1)[1]
    p = subprocess.run(shlex.split(hint), cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=300,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming in epoch 1 after iteration 1" in p.stderr
    assert os.path.isfile(str(run_dir / "best.ckpt"))


def test_stamps_and_timings_round_trip(tmp_path):
    """A stamp matches only the same command and inputs; timings.json keeps every stage."""
    import time
    from report import stages
    out, source = str(tmp_path), tmp_path / "in.txt"
    source.write_text("a")
    rc, memory = stages.call([sys.executable, "-c", "x = bytearray(10 ** 8)"])
    assert rc == 0 and memory["largest_gb"] >= 0.1 and memory["cpu_seconds"] >= 0
    stages.write_stamp(out, "synth", ["cmd"], [str(source)], 1.23, memory)
    assert stages.stamp_matches(out, "synth", ["cmd"], [str(source)])
    assert not stages.stamp_matches(out, "synth", ["other"], [str(source)])
    source.write_text("b")
    assert not stages.stamp_matches(out, "synth", ["cmd"], [str(source)])
    rows = stages.stage_rows(out, [("synth", None), ("prepare", 2.04)], {"prepare": memory})
    assert rows[0] == dict(stage="synth", seconds=None, skipped=True, seconds_earlier_run=1.2)
    assert rows[1]["seconds"] == 2.0 and rows[1]["largest_gb"] == memory["largest_gb"]
    record = stages.timings_record(rows, time.time() - 5, None, command="x")
    assert list(record)[:2] == ["command", "stages"] and record["stages_seconds"] == 2.0
    assert record["wall_seconds"] >= 5
    stages.write_timings(out, record)
    assert stages.read_timings(out) == record
    assert len(stages.timings_lines(record)) == 4      # header, two stages, total
