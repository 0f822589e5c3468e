"""`python -m reproduce demo --paper-scale --out DIR`: configs/paper.yaml end to end on a CPU.

The paper's own configuration, on the paper's 21,500 x 21,500 px canvas at 2.28 um/px, from
synthetic slides to the table, on 2 ranks (mpirun) with the paper's augmentation:

    synth (full-resolution slides at 2.28 um/px) -> prepare -> train -> predict --cam -> table

``configs/paper.yaml`` is copied to ``DIR/paper-scale.yaml`` with only these keys changed
(``CHANGES``), and the difference is printed and kept in ``DIR/paper-scale.diff``:

    model.weights               none: offline (no ImageNet download)
    train.iterations_per_epoch  --iterations (default 1; the paper: 88)
    train.max_epochs            --epochs (default 1; the paper: until the schedule stops)
    data.canvas                 --canvas, only when below 21,500 (tests)
    data.translate_px           follows --canvas (500 px x canvas / 21,500), only with it

Everything else is the paper's: batch 8 (2 ranks x 4 accumulated slides), Adam 1e-5, frozen
BatchNorm, augmentation on, ``strategy: auto`` (streaming; the tile comes from host RAM / ranks
on a CPU, printed before training).

Why these sizes. A training step costs in proportion to the pixels it computes, about 0.094 M px
per second on 2 CPU threads (docs/benchmarks.md, "21,500² with a tissue-sized content"): the
content grown by about 1,000 px along each axis (the receptive field and the window margins), as
rotated by the augmentation, plus a small proxy of the blank canvas. One update is 8 slides
(``batch_size`` 8), whatever the number of ranks. The default synthetic slide, 5.5 x 4.5 mm
(2,412 x 1,974 px at 2.28 um/px), averages about 23 M px per step at the tile that 24 GB / 2
ranks gives (1152 px): 8 steps take about 33 min, over the 30 min budget alone. A 4.0 x 3.8 mm
slide (1,754 x 1,667 px; the generator's smallest, which still holds a node with a > 2 mm
macrometastasis) averages about 16 M px: about 23 min for the update, and the other stages fit in
the rest. 12 slides give 8 train (each seen once by the one update), 2 validation and 2 test
slides, one of each class, so the table has both classes.
"""
import difflib
import json
import os
import re
import sys
import time

from data.files import atomic_write_text
from reproduce.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIG = os.path.join(ROOT, "configs", "paper.yaml")
DERIVED = "paper-scale.yaml"
DIFF = "paper-scale.diff"
TIMINGS = "timings.json"

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


def add_arguments(parser):
    group = parser.add_argument_group(
        "the paper's protocol at full scale (--paper-scale)",
        "configs/paper.yaml unchanged but for model.weights none (offline) and the step counts "
        "below, on synthetic 4.0 x 3.8 mm slides rendered at 2.28 um/px (the paper's scale) on "
        "the 21,500 px canvas; 2 ranks, augmentation on. The slide is the generator's smallest "
        "(still holding a > 2 mm macrometastasis) because a step's time follows the tissue's "
        "pixels: the one update of 8 slides then takes about 23 min on 2 CPU cores, and the whole "
        "run fits about 30 min (README, 'The paper's protocol at full scale').")
    group.add_argument("--paper-scale", action="store_true",
                       help="run configs/paper.yaml end to end at 21,500^2 (writes the config "
                            "that ran to OUT/paper-scale.yaml, the stage timings and peak "
                            "memory to OUT/timings.json)")
    group.add_argument("--iterations", type=int, default=None, metavar="N",
                       help="train.iterations_per_epoch (default {}; the paper: 88)".format(
                           ITERATIONS))
    group.add_argument("--epochs", type=int, default=None, metavar="N",
                       help="train.max_epochs (default {}; the paper: until its schedule "
                            "stops)".format(EPOCHS))
    group.add_argument("--canvas", type=int, default=None, metavar="PX",
                       help="data.canvas in px at 2.28 um/px (default: the paper's 21500; "
                            "smaller for tests: translate_px then shrinks in proportion)")


# --------------------------------------------------------------------------- the config

_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


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
            raise UserError("{}: no section '{}' for {}".format(PAPER_CONFIG, section, dotted))
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


def differences(paper_text, derived_text):
    """{dotted key: (paper value, derived value)} for every key whose value differs."""
    import yaml
    a, b = flatten(yaml.safe_load(paper_text)), flatten(yaml.safe_load(derived_text))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def paper_values(paper_text, canvas=None, iterations=None, epochs=None):
    """The values a --paper-scale run sets, {dotted key: value}: weights none, the step counts,
    and a reduced canvas with its translation in proportion (only when ``canvas`` is smaller
    than the paper's)."""
    import yaml
    paper = flatten(yaml.safe_load(paper_text))
    values = {"model.weights": "none",
              "train.iterations_per_epoch": ITERATIONS if iterations is None else iterations,
              "train.max_epochs": EPOCHS if epochs is None else epochs}
    full = paper["data.canvas"]
    if canvas is not None and canvas != full:
        values["data.canvas"] = canvas
        values["data.translate_px"] = int(round(paper.get("data.translate_px", 0) * canvas /
                                                float(full)))
    return values


# --------------------------------------------------------------------------- checks

def _split_counts(slides, seed):
    """{split: (slides, positives)} of the synthetic cohort that synth will write."""
    from data.synth import plan_cohort
    counts = {}
    for row in plan_cohort(slides, seed):
        n, pos = counts.get(row["split"], (0, 0))
        counts[row["split"]] = (n + 1, pos + int(row["label"]))
    return counts


def _cohort_ok(slides, seed, ranks):
    c = _split_counts(slides, seed)
    test, val, train = c.get("test", (0, 0)), c.get("val", (0, 0)), c.get("train", (0, 0))
    return 0 < test[1] < test[0] and val[0] >= 1 and train[0] >= ranks


def _check(args, paper_text):
    import yaml
    paper = flatten(yaml.safe_load(paper_text))
    for flag, value in (("--config", args.config), ("--manifest", args.manifest),
                        ("--predictions", args.predictions)):
        if value is not None:
            raise UserError("{}: not with --paper-scale (it runs configs/paper.yaml on its own "
                            "synthetic cohort)".format(flag))
    most = paper.get("train.iterations_per_epoch")
    if args.iterations is not None and not 1 <= args.iterations <= most:
        raise UserError("--iterations: must be in 1..{} (configs/paper.yaml's "
                        "iterations_per_epoch), got {}".format(most, args.iterations))
    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs: must be >= 1, got {}".format(args.epochs))
    full = paper["data.canvas"]
    if args.canvas is not None and not MIN_CANVAS <= args.canvas <= full:
        raise UserError("--canvas: must be in {}..{} px (configs/paper.yaml's canvas), got "
                        "{}".format(MIN_CANVAS, full, args.canvas))
    slides = SLIDES if args.slides is None else args.slides
    if slides < 2:
        raise UserError("--slides: need at least 2, got {}".format(slides))
    if args.seed < 0:
        raise UserError("--seed: must be >= 0, got {}".format(args.seed))
    if not _cohort_ok(slides, args.seed, args.np):
        fewest = next((n for n in range(slides + 1, 1000) if _cohort_ok(n, args.seed, args.np)),
                      None)
        counts = _split_counts(slides, args.seed)
        raise UserError(
            "--slides {}: the synthetic cohort would hold test {} (positive {}), val {}, train {} "
            "slides; --paper-scale needs both classes in test, a validation slide and a "
            "training slide per rank{}".format(
                slides, *[counts.get(s, (0, 0))[i] for s, i in (
                    ("test", 0), ("test", 1), ("val", 0), ("train", 0))],
                "; use --slides {}".format(fewest) if fewest else ""))


# --------------------------------------------------------------------------- the run

def _rel(path):
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def memory_plan(cfg, ranks):
    """How the run will use memory, as printed before it: dict(strategy, train and predict:
    dict(tile, line, estimate_gb per process)), from ``model.strategy`` (the same choice the
    ranks make; no TensorFlow)."""
    from model import gpu, strategy
    t = cfg["train"]
    concrete = strategy.resolve(t["strategy"])
    plan = dict(strategy=concrete, ranks=ranks, host_ram_gb=round(gpu.host_ram_bytes() / 1e9, 1))
    if concrete != "streaming":
        return plan
    canvas, mpp = cfg["data"]["canvas"], cfg["data"]["target_mpp"]
    for what, training, n in (("train", True, ranks), ("predict", False, 1)):
        try:
            choice = strategy.choose_tile(t["tile"], t["memory_gb"], canvas, training,
                                          rank_on_node=0, ranks_on_node=n)
        except ValueError as e:
            raise UserError("{}: train.tile/memory_gb: {}".format(cfg.path, e))
        window = min(choice.tile + 2 * choice.margin, canvas)
        estimate = strategy.BASE_BYTES + strategy.bytes_per_pixel(training) * window ** 2
        plan[what] = dict(tile=choice.tile, line=choice.line(mpp),
                          estimate_gb=round(estimate / 1e9, 1), processes=n)
    return plan


class PaperScale(object):
    """A --paper-scale run's settings and records: ``setup`` makes it, ``finish`` reports."""

    def __init__(self, args, values, changes, plan):
        self.args, self.values, self.changes, self.plan = args, values, changes, plan
        self.out = args.out
        self.started = time.time()
        self.load_start = _load()
        canvas = values.get("data.canvas")
        self.title = ("SYNTHETIC cohort, configs/paper.yaml at {:,} px ({} iteration(s) x {} "
                      "epoch(s) from random weights; not the paper's data or results)").format(
            canvas or _paper_canvas(), values["train.iterations_per_epoch"],
            values["train.max_epochs"])

    def finish(self, runner):
        """Prints the stage timings and peak memory, and writes them to OUT/timings.json."""
        from reproduce import measure
        stages = []
        for stage, seconds in runner.timings:
            row = dict(stage=stage, seconds=None if seconds is None else round(seconds, 1),
                       skipped=seconds is None)
            if seconds is None:     # done by an earlier run: its stamp holds its time
                try:
                    with open(os.path.join(runner.stamps, stage + ".json")) as f:
                        row["seconds_earlier_run"] = json.load(f).get("seconds")
                except (OSError, ValueError):
                    pass
            row.update(runner.memory.get(stage, {}))
            stages.append(row)
        ran = sum(r["seconds"] or 0 for r in stages)
        record = dict(
            command=" ".join([os.path.basename(sys.executable), "-m", "reproduce"] +
                             sys.argv[1:]),
            config=os.path.join(self.out, DERIVED), changed=self.changes,
            memory_plan=self.plan, stages=stages, stages_seconds=round(ran, 1),
            wall_seconds=round(time.time() - self.started, 1), started=time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(self.started)), finished=measure.now(),
            load_average_start=self.load_start, load_average_end=_load(),
            cpus=os.cpu_count())
        path = atomic_write_text(os.path.join(self.out, TIMINGS),
                                 json.dumps(record, indent=1) + "\n")
        print("\n[demo] paper scale: stage timings (wall) and peak memory -> {}".format(path))
        print("  {:<9} {:>9} {:>9}  {:>15}  {:>11}  {}".format(
            "stage", "wall s", "CPU s", "largest process", "all at once",
            "per process, GB (sampled)"))
        for r in stages:
            secs = "{:.0f}".format(r["seconds"]) if r["seconds"] is not None else "skipped"
            cpu = "{:.0f}".format(r["cpu_seconds"]) if "cpu_seconds" in r else ""
            largest = "{:.1f} GB".format(r["largest_gb"]) if "largest_gb" in r else ""
            together = "{:.1f} GB".format(r["together_gb"]) if "together_gb" in r else ""
            each = ", ".join("{} {:.1f}".format(label, gb)
                             for label, gb in r.get("per_process", [])[:4])
            print("  {:<9} {:>9} {:>9}  {:>15}  {:>11}  {}".format(r["stage"], secs, cpu,
                                                                    largest, together, each))
        print("  {:<9} {:>9.0f}  (whole command: {:.0f} s = {:.1f} min; load average at start "
              "{}, at end {})".format("total", ran, record["wall_seconds"],
                                      record["wall_seconds"] / 60.0,
                                      _fmt_load(self.load_start), _fmt_load(record[
                                          "load_average_end"])))
        return record


def _load():
    from reproduce.measure import load_average
    return load_average()


def _fmt_load(load):
    return "/".join("{:.1f}".format(x) for x in load) if load else "n/a"


def _paper_canvas():
    import yaml
    with open(PAPER_CONFIG) as f:
        return flatten(yaml.safe_load(f))["data.canvas"]


def setup(args):
    """For ``demo --paper-scale``: checks the flags, writes OUT/paper-scale.yaml (paper.yaml with
    ``paper_values``) and its diff, prints both and the memory plan, and points ``args`` at that
    config and the synthetic cohort's settings. Returns a ``PaperScale``, or None without
    --paper-scale (after refusing its flags alone)."""
    if not args.paper_scale:
        given = [flag for flag, value in (("--iterations", args.iterations),
                                          ("--epochs", args.epochs), ("--canvas", args.canvas))
                 if value is not None]
        if given:
            raise UserError("{}: only with --paper-scale".format(given[0]))
        return None
    try:
        with open(PAPER_CONFIG) as f:
            paper_text = f.read()
    except OSError as e:
        raise UserError("{}: cannot read ({})".format(PAPER_CONFIG, e.strerror))
    _check(args, paper_text)
    values = paper_values(paper_text, args.canvas, args.iterations, args.epochs)
    import yaml
    paper = flatten(yaml.safe_load(paper_text))
    notes = {k: "paper.yaml: {} ({})".format(_yaml_scalar(paper.get(k)), CHANGES[k])
             for k in values}
    derived = derive_text(paper_text, values, notes)
    header = ("# configs/paper.yaml as `python -m reproduce demo --paper-scale` ran it. Changed\n"
              "# only: {} (see reproduce/paper_scale.py, CHANGES).\n".format(
                  ", ".join(sorted(values))))
    derived = header + derived
    found = differences(paper_text, derived)
    if set(found) != set(values) or any(found[k][1] != v for k, v in values.items()):
        raise UserError("{}: could not derive the --paper-scale config (keys changed: {}; "
                        "meant: {})".format(PAPER_CONFIG, sorted(found), sorted(values)))
    os.makedirs(args.out, exist_ok=True)
    config = atomic_write_text(os.path.join(args.out, DERIVED), derived)
    diff = "".join(difflib.unified_diff(
        paper_text.splitlines(True), derived.splitlines(True), _rel(PAPER_CONFIG), config))
    atomic_write_text(os.path.join(args.out, DIFF), diff)

    from model.config import load_config
    cfg = load_config(config)
    plan = memory_plan(cfg, args.np)
    changes = {k: dict(paper=found[k][0], run=found[k][1], why=CHANGES[k]) for k in sorted(found)}
    print("[demo] paper scale: {} -> {}; only these keys differ ({}):".format(
        _rel(PAPER_CONFIG), config, os.path.join(args.out, DIFF)))
    for key, c in changes.items():
        print("  {:<27} {!s:>8} -> {!s:<6} ({})".format(key, c["paper"], c["run"], c["why"]))
    print("[demo] memory: strategy {} -> {}; host RAM {} GB, {} training ranks".format(
        cfg["train"]["strategy"], plan["strategy"], plan["host_ram_gb"], args.np))
    for what in ("train", "predict"):
        if what in plan:
            p = plan[what]
            print("  {:<8} {}; about {} GB per process{}".format(
                what + ":", p["line"], p["estimate_gb"],
                ", {:.1f} GB for {} ranks".format(p["estimate_gb"] * p["processes"],
                                                  p["processes"]) if p["processes"] > 1 else ""))

    # the synthetic cohort: full resolution at the config's mpp, node-sized slides
    width, height = SLIDE_MM
    args.synth_mpp = cfg["data"]["target_mpp"]
    args.synth_args = "--width-mm {:g} --height-mm {:g} {}".format(
        width, height, args.synth_args).strip()
    if args.slides is None:
        args.slides = SLIDES
    args.config = config
    return PaperScale(args, values, changes, plan)
