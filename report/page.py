"""The reviewer's report: one self-contained HTML file of a run's results and provenance.

``build`` reads what a run left (``reproduce demo`` or ``reproduce table`` + ``predict --cam``):

    RUN/table/table.csv      the paper-vs-reproduction numbers (required)
    RUN/table/table.md       the table's notes and any extra section (rendered from Markdown)
    RUN/table/fig*.png       ROC and learning-curve figures
    RUN/predict/predictions.csv + RUN/predict/cam/<slide_id>.png   the CAM gallery
    RUN/.stamps/*.json       the stage timings (and the commands, to find config and manifest)

and writes one HTML file in which every image is a ``data:`` URI and the style sheet is inline:
no script, no font, nothing fetched, so the file can be mailed or archived and opens offline.
The table's numbers are rendered from table.csv (each value in a ``<span data-col=...>`` so that
a test can compare them with the CSV); every column and level the CSV holds is shown, including
ones this module does not know, so rows another stage adds appear without a change here.
Thumbnails of the CAM overlays link to the full-size overlays, shown in-page with CSS ``:target``.
The table's column schema and its group and level names are ``stats.table``'s, the order of a
run's stages ``report.stages``'.
"""
import base64
import csv
import html
import io
import json
import math
import os
import re
import time

from data.errors import InputError
from data.files import atomic_write_text
from report import provenance
from report.stages import STAGES
from stats.table import GROUP_NAMES, LEVEL_NAMES, PAPER_COLUMNS

# Columns of table.csv this module formats itself (the paper's layout, ``stats.table``'s schema);
# any other column is appended as it comes.
KNOWN_COLUMNS = frozenset(PAPER_COLUMNS)
# |difference| at which a difference cell reaches full colour: 0.1 of AUC, 10 points of accuracy
DIFF_SCALE = {"auc_diff": 0.1, "accuracy_diff_pct": 10.0}
FIGURE_CAPTIONS = {
    "fig1": "Fig. 1: learning curves (a: loss, b: accuracy; training and validation) and ROC "
            "curves (c: slide level, d: single-lymph-node level).",
    "fig2": "Fig. 2: slide-level ROC curves by metastasis size (a: macro, b: micro, c: ITC) and "
            "histological subtype (d: classical, e: mucinous, f: signet ring / poorly diff.).",
    "fig3": "Fig. 3: single-lymph-node-level ROC curves by metastasis size (a-c) and "
            "histological subtype (d-f).",
}
THUMB_PX = 240          # longer side of a gallery thumbnail, screen pixels

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1500px;padding:0 24px 48px;color:#1f2328;background:#fff}
h1{font-size:24px;margin:20px 0 6px}h2{margin-top:34px;border-bottom:1px solid #d0d7de}
nav a{margin-right:14px}
.banner{padding:8px 12px;border-radius:6px;margin:8px 0}
.synthetic{background:#fff8c5;border:1px solid #d4a72c}.own{background:#ddf4ff;border:1px solid #54aeff}
table{border-collapse:collapse;margin:8px 0 14px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.group,th.group{text-align:left}
td{white-space:nowrap}td.group,.kv td,.md td{white-space:normal}.wide{overflow-x:auto}
.ci{color:#57606a;font-size:12px}
.legend{color:#57606a;font-size:13px}
figure{margin:10px 0 22px}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.cam{width:250px;margin:0;border:1px solid #d0d7de;border-radius:6px;padding:5px;text-align:center}
.cam img{border:0;max-width:100%}.cam .pos{color:#cf222e;font-weight:600}
.lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.82);z-index:9;
 align-items:center;justify-content:center;flex-direction:column}
.lightbox:target{display:flex}.lightbox img{max-width:94vw;max-height:86vh;background:#fff}
.lightbox p,.lightbox a{color:#fff}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
code{background:#f6f8fa;padding:0 3px}
.bad{color:#cf222e;font-weight:600}
.kv th,.kv td{text-align:left}
"""


class ReportError(InputError):
    """A run directory the report cannot be made from; the message names the file."""


# ----------------------------------------------------------------------------- small helpers

def esc(text):
    return html.escape(str(text), quote=True)


def data_uri(data, mime="image/png"):
    return "data:{};base64,{}".format(mime, base64.b64encode(data).decode("ascii"))


def _float(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def cam_file_stem(slide_id):
    """The file name stem ``model.cam.export`` gives a slide's CAM outputs."""
    from data.files import file_stem
    return file_stem(slide_id)


def thumbnail_png(data, max_px=THUMB_PX):
    """PNG bytes of the image shrunk so that its longer side is at most ``max_px``."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        im.thumbnail((max_px, max_px), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def read_table_csv(path):
    if not os.path.isfile(path):
        raise ReportError("{}: not found; make the table first (reproduce table, or the "
                          "demo)".format(path))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    for need in ("level", "group"):
        if need not in columns:
            raise ReportError("{}: missing column '{}'".format(path, need))
    return columns, rows


# ------------------------------------------------------------------------------ the table

def _num(row, col, fmt):
    """A value of ``col`` as ``<span data-col=col>``, or '' when the CSV cell is empty."""
    v = _float(row.get(col))
    if v is None:
        return ""
    return '<span class="num" data-col="{}">{}</span>'.format(esc(col), esc(fmt.format(v)))


def _p_value(row):
    v = _float(row.get("p_vs_dummy"))
    if v is None:
        return ""
    text = "<0.0001" if v < 1e-4 else "{:.4f}".format(v)
    return '<span class="num" data-col="p_vs_dummy">{}</span>'.format(esc(text))


def _with_ci(row, col, lo, hi, fmt):
    main = _num(row, col, fmt)
    if not main:
        return ""
    a, b = _num(row, lo, fmt), _num(row, hi, fmt)
    return main + (' <span class="ci">[{}&ndash;{}]</span>'.format(a, b) if a and b else "")


def _range(row, lo, hi, fmt):
    a, b = _num(row, lo, fmt), _num(row, hi, fmt)
    return "{}&ndash;{}".format(a, b) if a and b else ""


def _diff_cell(row, col, lo, hi, paper):
    """A difference (reproduction - paper) as a cell coloured by sign and size; its title says
    whether the paper's value lies inside this run's 95% CI."""
    d = _float(row.get(col))
    if d is None:
        return "<td></td>"
    strength = min(1.0, abs(d) / DIFF_SCALE[col])
    rgb = (26, 127, 55) if d >= 0 else (207, 34, 46)
    style = "background:rgba({},{},{},{:.2f})".format(*rgb, 0.08 + 0.5 * strength)
    p, a, b = _float(row.get(paper)), _float(row.get(lo)), _float(row.get(hi))
    if p is not None and a is not None and b is not None:
        inside = a <= p <= b
        tip = "the paper's value {} this run's 95% CI".format("lies inside" if inside
                                                               else "lies outside")
    else:
        tip = "reproduction minus paper"
    fmt = "{:+.4f}" if col == "auc_diff" else "{:+.2f}"
    return '<td class="diff" style="{}" title="{}">{}</td>'.format(
        style, esc(tip), _num(row, col, fmt))


def _generic(row, col):
    """A cell of a column this module does not know: a number with 2 decimals for a percentage
    (``*pct*``), 4 otherwise, none for an integer; text escaped."""
    raw = (row.get(col) or "").strip()
    v = _float(raw)
    if v is None:
        return esc(raw)
    if re.match(r"^-?\d+$", raw):
        fmt = "{:.0f}"
    else:
        fmt = "{:.2f}" if "pct" in col else "{:.4f}"
    return _num(row, col, fmt)


def _header(col):
    """A CSV column name made readable: 'loc_tumour_covered_pct_mean' -> 'loc tumour covered %
    mean' (the name itself in the title)."""
    text = re.sub(r"(^|_)pct(_|$)", r"\1%\2", col).replace("_", " ")
    return '<th title="{}">{}</th>'.format(esc(col), esc(text))


def _is_paper_row(row):
    """A row of the paper's layout: it has an AUC or an accuracy."""
    return _float(row.get("auc")) is not None or _float(row.get("accuracy_pct")) is not None


def _level_name(level):
    return LEVEL_NAMES.get(level, level.capitalize())


def _results_table(level, rows, extra):
    head = ["Group", "n+/n&minus;", "AUC [95% CI, DeLong]", "p vs dummy", "Paper AUC [95% CI]",
            "&Delta;AUC", "Accuracy %", "Wilson 95% CI", "Wald 95% CI", "Paper accuracy % [CI]",
            "&Delta;Acc (pp)", "Sensitivity %"]
    out = ['<table class="results" data-level="{}"><tr>{}{}</tr>'.format(
        esc(level), "".join('<th{}>{}</th>'.format(' class="group"' if i == 0 else "", h)
                            for i, h in enumerate(head)),
        "".join(_header(c) for c in extra))]
    for r in rows:
        note = r.get("paper_note") or ""
        name = esc(GROUP_NAMES.get(r["group"], r["group"]))
        if note:
            name = '<span title="{}">{}&nbsp;&dagger;</span>'.format(esc(note), name)
        cells = [
            '<td class="group">{}</td>'.format(name),
            "<td>{}/{}</td>".format(_num(r, "n_pos", "{:.0f}"), _num(r, "n_neg", "{:.0f}")),
            "<td>{}</td>".format(_with_ci(r, "auc", "auc_lower", "auc_upper", "{:.4f}")),
            "<td>{}</td>".format(_p_value(r)),
            "<td>{}</td>".format(_with_ci(r, "paper_auc", "paper_auc_lower", "paper_auc_upper",
                                          "{:.4f}")),
            _diff_cell(r, "auc_diff", "auc_lower", "auc_upper", "paper_auc"),
            "<td>{}</td>".format(_num(r, "accuracy_pct", "{:.2f}")),
            "<td>{}</td>".format(_range(r, "wilson_lower_pct", "wilson_upper_pct", "{:.2f}")),
            "<td>{}</td>".format(_range(r, "wald_lower_pct", "wald_upper_pct", "{:.2f}")),
            "<td>{}</td>".format(_with_ci(r, "paper_accuracy_pct", "paper_accuracy_pct_lower",
                                          "paper_accuracy_pct_upper", "{:.2f}")),
            _diff_cell(r, "accuracy_diff_pct", "wilson_lower_pct", "wilson_upper_pct",
                       "paper_accuracy_pct"),
            "<td>{}</td>".format(_num(r, "sensitivity_pct", "{:.2f}")),
        ] + ["<td>{}</td>".format(_generic(r, c)) for c in extra]
        out.append('<tr data-level="{}" data-group="{}">{}</tr>'.format(
            esc(level), esc(r["group"]), "".join(cells)))
    out.append("</table>")
    return "\n".join(out)


def _other_table(group, rows, columns):
    """Rows outside the paper's layout (e.g. the CAM localisation line): every column that is
    filled in any of them, one row per level."""
    shown = [c for c in columns if c not in ("level", "group", "paper_note")
             and any((r.get(c) or "").strip() for r in rows)]
    out = ['<table class="other" data-group="{}"><tr><th class="group">Level</th>{}</tr>'.format(
        esc(group), "".join(_header(c) for c in shown))]
    for r in rows:
        out.append('<tr data-level="{}" data-group="{}"><td class="group">{}</td>{}</tr>'.format(
            esc(r["level"]), esc(group), esc(_level_name(r["level"])),
            "".join("<td>{}</td>".format(_generic(r, c)) for c in shown)))
    out.append("</table>")
    return "\n".join(out)


def _in_order(values):
    """The distinct ``values`` in the order they first come."""
    return list(dict.fromkeys(values))


def render_table(columns, rows):
    """HTML of table.csv: the rows of the paper's layout as one table per level (in the CSV's
    order, with any further column filled in them), then each other group of rows (e.g. a
    localisation line) as a table of its filled columns."""
    paper_rows = [r for r in rows if _is_paper_row(r)]
    other_rows = [r for r in rows if not _is_paper_row(r)]
    out = []
    for level in _in_order(r["level"] for r in paper_rows):
        lr = [r for r in paper_rows if r["level"] == level]
        extra = [c for c in columns if c not in KNOWN_COLUMNS
                 and any((r.get(c) or "").strip() for r in lr)]
        thr = _float(lr[0].get("threshold"))
        out.append("<h3>{}{}</h3>".format(esc(_level_name(level)),
                                          " (threshold {:g})".format(thr) if thr is not None
                                          else ""))
        out.append('<div class="wide">{}</div>'.format(
            _results_table(level, lr, extra)))
    out.append('<p class="legend">&Delta; = reproduction minus paper: green above the paper, red '
               "below, stronger with the size of the difference (full at 0.1 of AUC or 10 "
               "points of accuracy); hover a difference to see whether the paper's value lies "
               "inside this run's 95% CI (AUC: DeLong; accuracy: Wilson). &dagger;: the paper's "
               "note on the row (hover).</p>")
    for group in _in_order(r["group"] for r in other_rows):
        out.append("<h3>{}</h3>".format(esc(GROUP_NAMES.get(group, group))))
        out.append('<div class="wide">{}</div>'.format(_other_table(
            group, [r for r in other_rows if r["group"] == group], columns)))
    return "\n".join(out)


# --------------------------------------------------------------- table.md: notes and extras

def _inline(text):
    """Markdown inline code and bold, HTML-escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append("<code>{}</code>".format(esc(part[1:-1])))
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(part)))
    return "".join(out)


def _md_blocks(text):
    """table.md as blocks: ('h', level, text), ('table', rows), ('list', [(depth, text)]),
    ('p', text). Enough Markdown for what ``reproduce table`` writes."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            blocks.append(("h", len(m.group(1)), m.group(2).strip()))
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.match(r"^:?-+:?$", c) for c in cells if c):
                    rows.append(cells)
                i += 1
            blocks.append(("table", rows))
        elif re.match(r"^\s*[-*]\s+", line):
            items = []
            while i < len(lines) and lines[i].strip():
                m = re.match(r"^(\s*)[-*]\s+(.*)$", lines[i])
                if m:
                    items.append([len(m.group(1)) // 2, m.group(2)])
                elif items:       # a wrapped continuation line
                    items[-1][1] += " " + lines[i].strip()
                i += 1
            blocks.append(("list", items))
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(
                    r"^(#{1,6}\s|\s*[-*]\s|\s*\|)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            blocks.append(("p", " ".join(para)))
    return blocks


def render_notes(md_text):
    """table.md's prose: its notes and any paragraph or heading of its own, without its title
    and its tables (the report renders every number from table.csv, so a table another stage
    adds to both files appears once, from the CSV)."""
    blocks = _md_blocks(md_text)
    out = []
    for k, block in enumerate(blocks):
        kind = block[0]
        if kind == "h":
            nxt = blocks[k + 1] if k + 1 < len(blocks) else None
            if block[1] == 1 or (nxt and nxt[0] == "table"):
                continue
            out.append("<h4>{}</h4>".format(_inline(block[2])))
        elif kind == "table":
            continue
        elif kind == "list":
            html_list, depth = ["<ul>"], 0
            for d, text in block[1]:
                while depth < d:
                    html_list.append("<ul>")
                    depth += 1
                while depth > d:
                    html_list.append("</ul>")
                    depth -= 1
                html_list.append("<li>{}</li>".format(_inline(text)))
            html_list.append("</ul>" * (depth + 1))
            out.append("".join(html_list))
        elif block[1] != "Notes:":     # the report gives the notes their own heading
            out.append("<p>{}</p>".format(_inline(block[1])))
    return "\n".join(out)


# ---------------------------------------------------------------------------- the figures

def figure_files(table_dir):
    """The figure PNGs to show: each composite figN.png, a panel only when its composite is
    missing, then any other PNG of the folder."""
    if not os.path.isdir(table_dir):
        return []
    pngs = sorted(f for f in os.listdir(table_dir) if f.endswith(".png"))
    composites = [f for f in pngs if re.match(r"^fig\d+\.png$", f)]
    have = {f[:-4] for f in composites}
    panels = [f for f in pngs if re.match(r"^fig\d+[a-z]\.png$", f)
              and f[:-5] not in have]
    others = [f for f in pngs if f not in composites and f not in panels
              and not re.match(r"^fig\d+[a-z]\.png$", f)]
    return [os.path.join(table_dir, f) for f in composites + panels + others]


def render_figures(paths):
    out = []
    for path in paths:
        name = os.path.basename(path)[:-4]
        with open(path, "rb") as f:
            uri = data_uri(f.read())
        caption = FIGURE_CAPTIONS.get(name, name)
        out.append('<figure id="{}"><img class="figure" alt="{}" src="{}"><figcaption>{}'
                   "</figcaption></figure>".format(esc(name), esc(name), uri, esc(caption)))
    return "\n".join(out) if out else "<p>No figures in the run's table folder.</p>"


# ------------------------------------------------------------------------------ the gallery

def read_predictions(path):
    """[(slide_id, probability, label, level)] of a predictions CSV, most probable first."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for need in ("slide_id", "probability", "label"):
            if need not in (reader.fieldnames or []):
                raise ReportError("{}: missing column '{}'".format(path, need))
        rows = []
        for r in reader:
            p = _float(r["probability"])
            if p is None:
                raise ReportError("{}: probability of {!r} is not a number".format(
                    path, r["slide_id"]))
            rows.append((r["slide_id"], p, r["label"], r.get("level") or "slide"))
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows


def render_gallery(predictions, cam_dir, progress=False):
    """(gallery HTML, lightbox HTML, number of CAMs shown, rows without a CAM)."""
    from tqdm import tqdm
    thumbs, boxes, missing = [], [], []
    for k, (sid, prob, label, level) in enumerate(tqdm(predictions, desc="report: CAMs",
                                                      unit="CAM", disable=not progress)):
        path = os.path.join(cam_dir, cam_file_stem(sid) + ".png")
        if not os.path.isfile(path):
            missing.append(sid)
            continue
        with open(path, "rb") as f:
            full = f.read()
        anchor = "cam-{}".format(k + 1)
        positive = str(label).strip() in ("1", "1.0")
        caption = "{} &middot; {} &middot; p = {:.3f} &middot; label {}".format(
            esc(sid), esc(level), prob, esc(label))
        thumbs.append(
            '<figure class="cam" data-slide="{}" data-probability="{!r}" data-label="{}">'
            '<a href="#{}"><img class="cam-thumb" alt="CAM of {}" src="{}"></a>'
            '<figcaption>{}<br>{} &middot; <b>p = {:.3f}</b> &middot; <span class="{}">label {}'
            "</span></figcaption></figure>".format(
                esc(sid), prob, esc(label), anchor, esc(sid), data_uri(thumbnail_png(full)),
                esc(sid), esc(level), prob, "pos" if positive else "neg", esc(label)))
        boxes.append('<div class="lightbox" id="{}"><img class="cam-full" alt="CAM of {}" '
                     'src="{}"><p>{}</p><a href="#gallery">close</a></div>'.format(
                         anchor, esc(sid), data_uri(full), caption))
    return "\n".join(thumbs), "\n".join(boxes), len(thumbs), missing


# ---------------------------------------------------------------------------- provenance

def _gib(n):
    return "unknown" if not n else "{:.1f} GiB".format(n / float(1 << 30))


def _code_section(git, command):
    """The commit (and whether the checkout differs from it) and the report's command."""
    out = ["<h3>Code</h3><table class=\"kv\">"]
    if git["commit"]:
        state = ('<span class="bad">dirty</span> ({} changed path{})'.format(
            git["changed"], "" if git["changed"] == 1 else "s") if git["dirty"] else "clean")
        out.append("<tr><th>git commit</th><td><code>{}</code> ({})</td></tr>".format(
            esc(git["commit"]), state))
    else:
        out.append("<tr><th>git commit</th><td>not a git checkout</td></tr>")
    if command:
        out.append("<tr><th>report command</th><td><code>{}</code></td></tr>".format(
            esc(command)))
    out.append("</table>")
    return out


def _machine_section(m):
    """CPU, cores, RAM, GPUs, OS, Python and host of the machine that wrote the report."""
    out = ["<h3>Machine</h3><table class=\"kv\">"]
    gpu = m["gpus"]
    gpu_text = ("no nvidia-smi on this machine" if gpu is None else
                "none found by nvidia-smi" if not gpu else "<br>".join(esc(x) for x in gpu))
    for key, value in (("CPU", esc(m["cpu"])), ("logical cores", esc(m["cores"])),
                       ("RAM", _gib(m["memory_bytes"])), ("GPU", gpu_text),
                       ("OS", esc(m["os"])), ("Python", esc(m["python"])),
                       ("host", esc(m["host"]))):
        out.append("<tr><th>{}</th><td class=\"group\">{}</td></tr>".format(key, value))
    out.append("</table><p class=\"legend\">The machine that wrote this report (the demo writes "
               "it right after its other stages, on the same machine).</p>")
    return out


def _timings_section(timings):
    """The stamped stages' times (the report's own excluded: it is still running)."""
    out = ["<h3>Stage timings</h3>"]
    timings = [t for t in timings if t[0] != "report"]
    if not timings:
        return out + ["<p>No stage stamps in this run folder.</p>"]
    out.append('<table class="timings"><tr><th class="group">stage</th><th>seconds</th>'
               "<th>finished</th><th>peak RSS (GB, largest process)</th></tr>")
    total = 0.0
    for stage, seconds, finished, rss in timings:
        total += seconds or 0.0
        out.append('<tr><td class="group">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>'
                   .format(esc(stage), "" if seconds is None else "{:.1f}".format(seconds),
                           esc(finished or ""), "" if rss is None else "{:.2f}".format(rss)))
    out.append('<tr><th class="group">total</th><th>{:.1f}</th><th></th><th></th></tr>'
               "</table>".format(total))
    out.append('<p class="legend">From the stamps in the run\'s .stamps folder: a stage '
               "skipped on a rerun keeps the time of the run that made it.</p>")
    return out


def _inputs_section(man, cfg):
    """The manifest (path and sha256) and the config (path and text)."""
    out = ["<h3>Inputs</h3><table class=\"kv\">"]
    if man:
        out.append("<tr><th>manifest</th><td class=\"group\"><code>{}</code><br>sha256 "
                   "<code>{}</code></td></tr>".format(esc(man["path"]),
                                                     esc(man["sha256"] or "file not found")))
    else:
        out.append("<tr><th>manifest</th><td class=\"group\">not known</td></tr>")
    out.append("<tr><th>config</th><td class=\"group\">{}</td></tr></table>".format(
        "<code>{}</code>".format(esc(cfg["path"])) if cfg else "not known"))
    if cfg and cfg["text"] is not None:
        out.append("<pre class=\"config\">{}</pre>".format(esc(cfg["text"])))
    elif cfg:
        out.append("<p class=\"bad\">config file not found</p>")
    return out


def _packages_section(packages):
    """requirements.txt's pins beside the installed versions (a mismatch in red)."""
    out = ["<h3>Pinned packages (requirements.txt)</h3>",
           '<table class="packages"><tr><th class="group">package</th><th>pinned</th>'
           "<th>installed</th></tr>"]
    for name, pinned, installed in packages:
        cls = "" if installed == pinned else ' class="bad"'
        out.append('<tr><td class="group">{}</td><td>{}</td><td{}>{}</td></tr>'.format(
            esc(name), esc(pinned), cls, esc(installed or "not installed")))
    out.append("</table>")
    return out


def render_provenance(prov, command=None):
    """HTML of ``provenance.collect``'s dict: code, machine, stage timings, inputs, packages."""
    out = (_code_section(prov["git"], command) + _machine_section(prov["machine"]) +
           _timings_section(prov["timings"]) + _inputs_section(prov["manifest"], prov["config"])
           + _packages_section(prov["packages"]))
    return "\n".join(out)


# ------------------------------------------------------------------------------- the page

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Reproduction report - {title}</title>
<style>{style}</style></head>
<body>
<h1>Reproduction report &mdash; {title}</h1>
{banner}
<p>Whole-slide ResNet-50 for nodal micrometastasis in colorectal cancer (Modern Pathology,
2021), reproduced on TensorFlow 1.15.3 + Horovod 0.19.0. Run folder <code>{run}</code>;
report written {when}.</p>
<nav><a href="#table">Table</a><a href="#figures">Figures</a><a href="#gallery">CAM gallery
({n_cams})</a><a href="#provenance">Provenance</a></nav>
<h2 id="table">Paper vs reproduction</h2>
{table}
<h3>Notes</h3>
{notes}
<h2 id="figures">Figures</h2>
{figures}
<h2 id="gallery">CAM gallery</h2>
{gallery}
<h2 id="provenance">Provenance</h2>
{provenance}
{boxes}
</body></html>
"""


def cohort_kind(manifest):
    """'synthetic' when the manifest's folder holds the synthetic generator's cohort.json
    (``reproduce synth`` writes it), 'own' for any other manifest, None when none is known."""
    if not manifest:
        return None
    info = os.path.join(os.path.dirname(os.path.abspath(manifest)), "cohort.json")
    try:
        with open(info) as f:
            return "synthetic" if json.load(f).get("synthetic") else "own"
    except (OSError, ValueError, AttributeError):
        return "own"


def stamped_argument(run_dir, flag):
    """The value of ``flag`` in the first stamped stage command that has it (the demo's stamps
    hold each stage's command line), else None."""
    for stage in (t[0] for t in provenance.stage_timings(run_dir, STAGES)):
        try:
            with open(os.path.join(run_dir, ".stamps", stage + ".json")) as f:
                command = json.load(f).get("command") or []
        except (OSError, ValueError):
            continue
        if flag in command and command.index(flag) + 1 < len(command):
            return command[command.index(flag) + 1]
    return None


def _run_inputs(run_dir, config, manifest, predictions):
    """(config, manifest, predictions): the given ones, else what the run's stamps name (the
    predictions default to RUN/predict/predictions.csv); a config or manifest named but
    missing is an error."""
    config = config or stamped_argument(run_dir, "--config")
    manifest = manifest or stamped_argument(run_dir, "--manifest")
    predictions = predictions or stamped_argument(run_dir, "--predictions") or \
        os.path.join(run_dir, "predict", "predictions.csv")
    for what, path in (("config", config), ("manifest", manifest)):
        if path and not os.path.isfile(path):
            raise ReportError("{} {}: not found".format(what, path))
    return config, manifest, predictions


def _read_markdown(table_dir):
    """The text of RUN/table/table.md ('' when there is none)."""
    md_path = os.path.join(table_dir, "table.md")
    if not os.path.isfile(md_path):
        return ""
    with open(md_path, encoding="utf-8") as f:
        return f.read()


def _title_and_banner(kind, manifest, predictions, md_text):
    """The page's title and the banner that says whose cohort the numbers are of."""
    if kind == "synthetic":
        # the table's own title when it says what the demo made (e.g. its paper-scale variant)
        m = re.match(r"^# .*? - (.*SYNTHETIC.*)$", md_text.split("\n", 1)[0])
        title = m.group(1) if m else "SYNTHETIC cohort (embedded demo, not the paper's data)"
        banner = ('<p class="banner synthetic"><b>Synthetic cohort.</b> Every slide here was '
                  "drawn by a program (<code>reproduce synth</code>); the numbers test the "
                  "software and say nothing about the method on real slides.</p>")
        return title, banner
    what = os.path.basename(manifest) if manifest else os.path.basename(predictions)
    banner = ('<p class="banner own"><b>Your own cohort</b>: <code>{}</code>.</p>'.format(
        esc(manifest or predictions)))
    return "your own cohort ({})".format(what), banner


def _gallery_section(predictions, progress):
    """(gallery HTML with its introduction, lightbox HTML, CAMs shown, rows without a CAM)."""
    if not os.path.isfile(predictions):
        return "<p>No predictions file ({}).</p>".format(esc(predictions)), "", 0, []
    cam_dir = os.path.join(os.path.dirname(predictions), "cam")
    thumbs, boxes, n_cams, missing = render_gallery(read_predictions(predictions), cam_dir,
                                                    progress)
    if n_cams:
        intro = ("<p>One class activation map per predicted slide or node, most probable "
                 "first; click a thumbnail for the full-size overlay. Heat above the CAM "
                 "threshold is drawn over the tissue.</p>")
    else:
        intro = "<p>No CAM overlays in <code>{}</code>.</p>".format(esc(cam_dir))
    if missing:
        intro += "<p>{} row(s) without a CAM overlay: {}.</p>".format(
            len(missing), esc(", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")))
    return intro + '<div class="gallery">{}</div>'.format(thumbs), boxes, n_cams, missing


def build(run_dir, out_path, config=None, manifest=None, predictions=None, command=None,
          progress=False):
    """Writes the report of ``run_dir`` to ``out_path``; returns a summary dict (path, bytes,
    cohort kind, CAM count, rows without a CAM). ``config``/``manifest``/``predictions``
    default to what the run's stamps name (the demo's layout)."""
    if not os.path.isdir(run_dir):
        raise ReportError("{}: run folder not found".format(run_dir))
    table_dir = os.path.join(run_dir, "table")
    columns, rows = read_table_csv(os.path.join(table_dir, "table.csv"))
    config, manifest, predictions = _run_inputs(run_dir, config, manifest, predictions)
    md_text = _read_markdown(table_dir)
    kind = cohort_kind(manifest)
    title, banner = _title_and_banner(kind, manifest, predictions, md_text)
    notes = render_notes(md_text)
    figures = render_figures(figure_files(table_dir))
    gallery, boxes, n_cams, missing = _gallery_section(predictions, progress)
    prov = provenance.collect(run_dir, config, manifest)
    page = PAGE.format(title=esc(title), style=STYLE, banner=banner,
                       run=esc(os.path.abspath(run_dir)),
                       when=esc(time.strftime("%Y-%m-%d %H:%M:%S %Z")), n_cams=n_cams,
                       table=render_table(columns, rows), notes=notes, figures=figures,
                       gallery=gallery, provenance=render_provenance(prov, command),
                       boxes=boxes)
    atomic_write_text(out_path, page)
    return {"path": out_path, "bytes": len(page.encode("utf-8")), "cohort": kind or "unknown",
            "cams": n_cams, "missing_cams": missing, "title": title}
