"""model.config: every shipped config loads; bad ones fail with one line naming the key.
model.paper_config: the paper-scale run's config differs from configs/paper.yaml only in its keys."""
import os
import subprocess
import sys

import pytest
import yaml

from model import paper_config
from model.config import load_config
from model.config import ConfigError as UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(tmp_path, data, name="c.yaml"):
    path = str(tmp_path / name)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


def _good():
    return {"data": {"cache": "cache", "target_mpp": 8.0, "canvas": 512},
            "model": {"weights": "none"},
            "train": {"batch_size": 4, "learning_rate": 1e-4},
            "out": "runs/x"}


@pytest.mark.parametrize("name", ["paper.yaml", "demo.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(os.path.join(ROOT, "configs", name), world_size=2)
    assert cfg["train"]["batch_size"] % 2 == 0
    assert cfg["data"]["canvas"] > 0


def test_paper_values():
    cfg = load_config(os.path.join(ROOT, "configs", "paper.yaml"), world_size=8)
    d, t = cfg["data"], cfg["train"]
    assert d["canvas"] == 21500
    assert 2.2 <= d["target_mpp"] <= 2.3
    assert (t["learning_rate"], t["reduced_learning_rate"]) == (1e-5, 1e-6)
    assert (t["batch_size"], t["iterations_per_epoch"], t["patience"]) == (8, 88, 24)
    assert cfg["model"]["weights"] == "imagenet" and t["strategy"] == "auto"


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, _good()), overrides={"out": "elsewhere"})
    assert cfg["out"] == "elsewhere"
    assert cfg["train"]["patience"] == 24 and cfg["train"]["strategy"] == "auto"
    assert isinstance(cfg["train"]["learning_rate"], float)


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["train"].update(bogus=1), "train.bogus"),
    (lambda c: c.update(extra={}), "extra"),
    (lambda c: c["data"].update(canvas=0), "data.canvas"),
    (lambda c: c["data"].update(canvas=-512), "data.canvas"),
    (lambda c: c["data"].pop("cache"), "data.cache"),
    (lambda c: c["data"].update(manifest="does/not/exist.csv"), "data.manifest"),
    (lambda c: c["model"].update(weights="missing.h5"), "model.weights"),
    (lambda c: c["train"].update(batch_size=3), "train.batch_size"),
    (lambda c: c["train"].update(tile=100), "train.tile"),
    (lambda c: c["train"].update(learning_rate="fast"), "train.learning_rate"),
    (lambda c: c["train"].update(reduced_learning_rate=1.0), "train.reduced_learning_rate"),
    (lambda c: c["train"].update(augment="yes"), "train.augment"),
    (lambda c: c.pop("out"), "out"),
    (lambda c: c["train"].update(on_plateau="restart"), "train.on_plateau"),
])
def test_bad_configs_name_the_key(tmp_path, mutate, key):
    data = _good()
    mutate(data)
    with pytest.raises(UserError) as e:
        load_config(_write(tmp_path, data), world_size=2)
    message = str(e.value)
    assert key in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_cli_bad_config_is_one_line_before_any_work(tmp_path):
    data = _good()
    data["data"]["canvas"] = 0
    path = _write(tmp_path, data)
    p = subprocess.run([sys.executable, "-m", "reproduce", "train", "--config", path],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "data.canvas" in p.stderr
    assert "Traceback" not in p.stderr


def test_data_resample_switch(tmp_path):
    cfg = load_config(_write(tmp_path, _good()))
    assert cfg["data"]["resample"] == "area"          # the default: the exact area filter
    assert load_config(os.path.join(ROOT, "configs", "paper.yaml"))["data"]["resample"] == "area"
    good = _good()
    good["data"]["resample"] = "cubic"                # the released code's cv2.INTER_CUBIC
    assert load_config(_write(tmp_path, good))["data"]["resample"] == "cubic"
    good["data"]["resample"] = "lanczos"
    with pytest.raises(UserError, match=r"c\.yaml: data\.resample: must be one of area, cubic"):
        load_config(_write(tmp_path, good))


def test_config_as_a_dict(tmp_path):
    """fit(config) takes a dict too: the same checks, the same defaults, named as a dict."""
    cfg = load_config(_good(), overrides={"train.max_epochs": 3})
    assert cfg["train"]["max_epochs"] == 3 and cfg["train"]["on_plateau"] == "keep"
    assert cfg == load_config(_write(tmp_path, _good()), overrides={"train.max_epochs": 3})
    again = load_config(cfg)                       # a loaded config is checked again, as is
    assert again == cfg and again.path == cfg.path
    bad = _good()
    bad["train"]["on_plateau"] = "sometimes"
    with pytest.raises(UserError, match="<config dict>: train.on_plateau"):
        load_config(bad)
    with pytest.raises(UserError, match="train.bogus"):
        load_config(_good(), overrides={"train.bogus": 1})


def test_strategy_names_have_one_home():
    from model.strategy import NAMES
    from model import config
    assert config.SCHEMA["train"]["strategy"][1]("streaming") is None
    assert "one of " + ", ".join(NAMES) in config.SCHEMA["train"]["strategy"][1]("gpu")


def test_derived_text_changes_only_the_values():
    with open(paper_config.PAPER_CONFIG) as f:
        text = f.read()
    values = paper_config.paper_values(text, canvas=2048, iterations=3, epochs=2)
    derived = paper_config.derive_text(text, values, {k: "why" for k in values})
    found = paper_config.differences(text, derived)
    assert {k: v[1] for k, v in found.items()} == values
    assert values["data.translate_px"] == round(500 * 2048 / 21500.0)
    # the full canvas keeps the paper's canvas and translation
    assert set(paper_config.paper_values(text)) == {
        "model.weights", "train.iterations_per_epoch", "train.max_epochs"}
    # lines not changed are kept byte for byte, comments included
    kept = [l for l in text.splitlines() if not any(
        l.strip().startswith(k.split(".")[-1] + ":") for k in values)]
    assert all(l in derived.splitlines() for l in kept)
    # a key the file lacks is added under its section
    lacking = text.replace("\n  max_epochs:", "\n  # max_epochs:")
    found = paper_config.differences(text, paper_config.derive_text(lacking, values))
    assert found["train.max_epochs"] == (None, 2)


def test_derived_config_and_its_diff_name_only_the_changes(tmp_path):
    text = paper_config.read_paper_text()
    values = paper_config.paper_values(text, canvas=1024)
    derived, changes = paper_config.derive(text, values)
    assert sorted(changes) == sorted(values)
    assert changes["model.weights"] == dict(paper="imagenet", run="none",
                                            why=paper_config.CHANGES["model.weights"])
    assert derived.startswith("# configs/paper.yaml as `python -m reproduce demo --paper-scale`")
    config, diff = paper_config.write_derived(str(tmp_path / "out"), text, derived)
    assert load_config(config)["data"]["canvas"] == 1024
    with open(diff) as f:
        lines = [l for l in f.read().splitlines() if l[:3] not in ("+++", "---")]
    removed = [l for l in lines if l.startswith("-")]
    added = [l for l in lines if l.startswith("+")]
    assert len(removed) == len(values) and len(added) == len(values) + 2    # + the header
    assert all(l[1:].lstrip().split(":")[0] in {k.split(".")[1] for k in values} for l in removed)
