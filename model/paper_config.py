"""configs/paper.yaml as a paper-scale run uses it (``reproduce demo --paper-scale``).

The run's config is ``configs/paper.yaml`` copied with only the keys of ``CHANGES`` set
(``paper_values``), every other line kept byte for byte, so that the diff shows only the change:

    model.weights               none: offline (no ImageNet download)
    train.iterations_per_epoch  default 1 (the paper: 88)
    train.max_epochs            default 1 (the paper: until the schedule stops)
    data.canvas                 only when below 21,500 (tests)
    data.translate_px           follows the canvas (500 px x canvas / 21,500), only with it

Everything else is the paper's: batch 8 (2 ranks x 4 accumulated slides), Adam 1e-5, frozen
BatchNorm, augmentation on, ``strategy: auto`` (streaming in levels; ``memory_plan`` says the
budget that host RAM / ranks gives on a CPU).

Why these sizes. A training step costs in proportion to the work its plan computes, which follows
the tissue, not the canvas (model/levels.py). One update is 8 slides (``batch_size`` 8), whatever
the number of ranks. A 4.0 x 3.8 mm slide (1,754 x 1,667 px at 2.28 um/px; the generator's
smallest, which still holds a node with a > 2 mm macrometastasis) keeps the whole run to a few
minutes on 2 CPU cores (README, "The paper's protocol at full scale": 4.9 min, the update 220 s).
12 slides give 8 train (each seen once by the one update), 2 validation and 2 test
slides, one of each class, so the table has both classes (``cohort_fits``).
"""
import difflib
import os
import re

from data.files import atomic_write_text
from model.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIG = os.path.join(ROOT, "configs", "paper.yaml")
DERIVED = "paper-scale.yaml"
DIFF = "paper-scale.diff"

SLIDES = 12               # 8 train, 2 val, 2 test (one of each class in val and test)
ITERATIONS = 1            # one update = batch_size 8 slides, i.e. 4 per rank on 2 ranks
EPOCHS = 1
SLIDE_MM = (4.0, 3.8)     # width, height: 1,754 x 1,667 px at 2.28 um/px (see the docstring)
MIN_CANVAS = 256

# dotted key -> why it differs from configs/paper.yaml (the only keys a --paper-scale run changes)
CHANGES = {
    "model.weights": "none: offline, no ImageNet download",
    "train.iterations_per_epoch": "--iterations",
    "train.max_epochs": "--epochs",
    "data.canvas": "--canvas (a reduced canvas, for tests)",
    "data.translate_px": "follows --canvas: the paper's 500 px x canvas / 21,500",
}

_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


# --------------------------------------------------------------------------- YAML text

def _yaml_scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _set_line(line, value, note=None):
    """``line`` (``  key: old   # comment``) with its value replaced and, with ``note``, its
    comment too; the comment keeps its column where the new value leaves room."""
    m = _LINE.match(line)
    rest = m.group("rest")
    comment = re.search(r"\s#", rest)
    head = "{}{}:".format(m.group("indent"), m.group("key"))
    # a new comment goes where configs/*.yaml put theirs (column 28)
    width = len(rest[:comment.start() + 1]) if comment else 28 - len(head)
    if note is not None:
        tail = "# " + note
    elif comment:
        tail = rest[comment.start() + 1:]
    else:
        return "{} {}".format(head, value)
    return "{}{}{}".format(head, (" " + value).ljust(max(width, len(value) + 2)), tail)


def derive_text(text, values, notes=None):
    """``text`` (a YAML config of sections, 2-space keys) with ``values`` ({dotted key: value})
    set in place, each changed line's comment replaced by ``notes[key]`` when given; every other
    line stays as it is, so a diff shows only the change. A key the text lacks is added under
    its section."""
    lines = text.splitlines()
    todo = dict(values)
    section, headers = None, {}
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if not m:
            continue
        if not m.group("indent"):
            section = m.group("key")
            headers[section] = i
            dotted = section
        else:
            dotted = "{}.{}".format(section, m.group("key"))
        if dotted in todo and (m.group("indent") or m.group("rest").strip()):
            note = (notes or {}).get(dotted)
            lines[i] = _set_line(line, _yaml_scalar(todo.pop(dotted)), note)
    for dotted in sorted(todo, key=lambda k: -headers.get(k.partition(".")[0], -1)):
        section, _, key = dotted.partition(".")
        if section not in headers:
            raise ConfigError("{}: no section '{}' for {}".format(PAPER_CONFIG, section, dotted))
        note = (notes or {}).get(dotted)
        lines.insert(headers[section] + 1, "  {}: {}{}".format(
            key, _yaml_scalar(todo[dotted]), "  # " + note if note else ""))
    return "\n".join(lines) + "\n"


def flatten(raw):
    """{dotted key: value} of a loaded YAML config (sections one level deep)."""
    flat = {}
    for section, value in (raw or {}).items():
        if isinstance(value, dict):
            for key, v in value.items():
                flat["{}.{}".format(section, key)] = v
        else:
            flat[section] = value
    return flat


def flat_values(text):
    """{dotted key: value} of a YAML config's text."""
    import yaml
    return flatten(yaml.safe_load(text))


def differences(paper_text, derived_text):
    """{dotted key: (paper value, derived value)} for every key whose value differs."""
    a, b = flat_values(paper_text), flat_values(derived_text)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


# --------------------------------------------------------------------------- the derived config

def read_paper_text():
    """The text of configs/paper.yaml (a one-line ConfigError when it cannot be read)."""
    try:
        with open(PAPER_CONFIG) as f:
            return f.read()
    except OSError as e:
        raise ConfigError("{}: cannot read ({})".format(PAPER_CONFIG, e.strerror))


def paper_values(paper_text, canvas=None, iterations=None, epochs=None):
    """The values a --paper-scale run sets, {dotted key: value}: weights none, the step counts,
    and a reduced canvas with its translation in proportion (only when ``canvas`` is smaller
    than the paper's). A value outside what configs/paper.yaml allows is a ConfigError naming
    its flag."""
    paper = flat_values(paper_text)
    _check_options(paper, canvas, iterations, epochs)
    values = {"model.weights": "none",
              "train.iterations_per_epoch": ITERATIONS if iterations is None else iterations,
              "train.max_epochs": EPOCHS if epochs is None else epochs}
    full = paper["data.canvas"]
    if canvas is not None and canvas != full:
        values["data.canvas"] = canvas
        values["data.translate_px"] = int(round(paper.get("data.translate_px", 0) * canvas /
                                                float(full)))
    return values


def _check_options(paper, canvas, iterations, epochs):
    """The run's options against configs/paper.yaml's values (``paper``: its flattened keys)."""
    most = paper.get("train.iterations_per_epoch")
    if iterations is not None and not 1 <= iterations <= most:
        raise ConfigError("--iterations: must be in 1..{} (configs/paper.yaml's "
                          "iterations_per_epoch), got {}".format(most, iterations))
    if epochs is not None and epochs < 1:
        raise ConfigError("--epochs: must be >= 1, got {}".format(epochs))
    full = paper["data.canvas"]
    if canvas is not None and not MIN_CANVAS <= canvas <= full:
        raise ConfigError("--canvas: must be in {}..{} px (configs/paper.yaml's canvas), got "
                          "{}".format(MIN_CANVAS, full, canvas))


def derive(paper_text, values):
    """The run's config text (``paper_text`` with ``values``, each changed line's comment saying
    the paper's value and why, under a header naming the changed keys) and its changes,
    {dotted key: dict(paper, run, why)}. Checks that exactly ``values`` changed."""
    paper = flat_values(paper_text)
    notes = {k: "paper.yaml: {} ({})".format(_yaml_scalar(paper.get(k)), CHANGES[k])
             for k in values}
    header = ("# configs/paper.yaml as `python -m reproduce demo --paper-scale` ran it. Changed\n"
              "# only: {} (see model/paper_config.py, CHANGES).\n".format(
                  ", ".join(sorted(values))))
    derived = header + derive_text(paper_text, values, notes)
    found = differences(paper_text, derived)
    if set(found) != set(values) or any(found[k][1] != v for k, v in values.items()):
        raise ConfigError("{}: could not derive the --paper-scale config (keys changed: {}; "
                          "meant: {})".format(PAPER_CONFIG, sorted(found), sorted(values)))
    changes = {k: dict(paper=found[k][0], run=found[k][1], why=CHANGES[k]) for k in sorted(found)}
    return derived, changes


def change_lines(changes):
    """The changes (``derive``), a line per key: the paper's value, the run's and why."""
    return ["  {:<27} {!s:>8} -> {!s:<6} ({})".format(key, c["paper"], c["run"], c["why"])
            for key, c in changes.items()]


def run_title(values, paper_canvas):
    """The title of the run's table: what ran, and that it is not the paper's result."""
    return ("SYNTHETIC cohort, configs/paper.yaml at {:,} px ({} iteration(s) x {} epoch(s) from "
            "random weights; not the paper's data or results)").format(
        values.get("data.canvas") or paper_canvas, values["train.iterations_per_epoch"],
        values["train.max_epochs"])


def write_run_config(out, ranks, slides=SLIDES, seed=0, canvas=None, iterations=None,
                     epochs=None):
    """Checks the options (``paper_values``, ``check_cohort``), then writes OUT/paper-scale.yaml
    and its diff (``write_derived``); returns (its path, the changes, the run's title)."""
    paper_text = read_paper_text()
    values = paper_values(paper_text, canvas, iterations, epochs)
    check_cohort(slides, seed, ranks)
    derived, changes = derive(paper_text, values)
    config, _ = write_derived(out, paper_text, derived)
    return config, changes, run_title(values, flat_values(paper_text)["data.canvas"])


def relative(path):
    """``path`` relative to the current directory when it lies below it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def write_derived(out, paper_text, derived):
    """Writes OUT/paper-scale.yaml and its unified diff against configs/paper.yaml,
    OUT/paper-scale.diff; returns both paths."""
    os.makedirs(out, exist_ok=True)
    config = atomic_write_text(os.path.join(out, DERIVED), derived)
    diff = "".join(difflib.unified_diff(paper_text.splitlines(True), derived.splitlines(True),
                                        relative(PAPER_CONFIG), config))
    return config, atomic_write_text(os.path.join(out, DIFF), diff)


# --------------------------------------------------------------------------- memory and cohort

def memory_plan(cfg, ranks):
    """How the run will use memory, as printed before it: dict(strategy, ranks, host_ram_gb and,
    for streaming, train and predict: dict(tile, line, estimate_gb per process, processes)),
    from ``model.strategy`` (the same choice the ranks make, in levels, as they run eagerly;
    no TensorFlow). ``estimate_gb`` is the budget a step plans within: it uses at most that."""
    from model import gpu, strategy
    t = cfg["train"]
    concrete = strategy.resolve(t["strategy"])
    plan = dict(strategy=concrete, ranks=ranks, host_ram_gb=round(gpu.host_ram_bytes() / 1e9, 1))
    if concrete != "streaming":
        return plan
    mpp = cfg["data"]["target_mpp"]
    for what, n in (("train", ranks), ("predict", 1)):
        try:
            room, line = strategy.levels_budget(t["tile"], t["memory_gb"], rank_on_node=0,
                                                ranks_on_node=n, mpp=mpp)
        except ValueError as e:
            raise ConfigError("{}: train.tile/memory_gb: {}".format(cfg.path, e))
        plan[what] = dict(tile=t["tile"], line=line,
                          estimate_gb=round((room + strategy.BASE_BYTES) / 1e9, 1), processes=n)
    return plan


def plan_lines(plan):
    """The memory plan's streaming budgets, a line per stage (train, predict) that has one."""
    lines = []
    for what in ("train", "predict"):
        if what in plan:
            p = plan[what]
            lines.append("  {:<8} {}; plans within {} GB per process{}".format(
                what + ":", p["line"], p["estimate_gb"],
                ", {:.1f} GB for {} ranks".format(p["estimate_gb"] * p["processes"],
                                                  p["processes"]) if p["processes"] > 1 else ""))
    return lines


def split_counts(slides, seed):
    """{split: (slides, positives)} of the synthetic cohort that ``data.synth`` will write."""
    from data.synth import plan_cohort
    counts = {}
    for row in plan_cohort(slides, seed):
        n, pos = counts.get(row["split"], (0, 0))
        counts[row["split"]] = (n + 1, pos + int(row["label"]))
    return counts


def cohort_fits(slides, seed, ranks):
    """True when the synthetic cohort holds both classes in test, a validation slide and a
    training slide per rank (what a table and a training on ``ranks`` ranks need)."""
    c = split_counts(slides, seed)
    test, val, train = c.get("test", (0, 0)), c.get("val", (0, 0)), c.get("train", (0, 0))
    return 0 < test[1] < test[0] and val[0] >= 1 and train[0] >= ranks


def fewest_slides(above, seed, ranks):
    """The smallest cohort size over ``above`` (below 1,000) that ``cohort_fits``, or None."""
    return next((n for n in range(above + 1, 1000) if cohort_fits(n, seed, ranks)), None)


def check_cohort(slides, seed, ranks):
    """A ConfigError naming the flag when the synthetic cohort of ``slides`` drawn from ``seed``
    cannot serve a run on ``ranks`` ranks (``cohort_fits``), with the fewest slides that can."""
    if slides < 2:
        raise ConfigError("--slides: need at least 2, got {}".format(slides))
    if seed < 0:
        raise ConfigError("--seed: must be >= 0, got {}".format(seed))
    if cohort_fits(slides, seed, ranks):
        return
    fewest = fewest_slides(slides, seed, ranks)
    counts = split_counts(slides, seed)
    raise ConfigError(
        "--slides {}: the synthetic cohort would hold test {} (positive {}), val {}, train {} "
        "slides; --paper-scale needs both classes in test, a validation slide and a "
        "training slide per rank{}".format(
            slides, *[counts.get(s, (0, 0))[i] for s, i in (
                ("test", 0), ("test", 1), ("val", 0), ("train", 0))],
            "; use --slides {}".format(fewest) if fewest else ""))
