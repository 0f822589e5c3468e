"""The prepare cache: every manifest row read once at the target mpp, stored as one image file.

Layout of ``CACHE/``:
- ``index.csv``: every manifest column (``path``/``annotation`` made absolute, ``label`` as 0/1)
  + ``cache_file`` (relative to CACHE), ``height``, ``width`` (pixels of the cached image),
  ``mpp`` (µm/px of the cached image = the target mpp) and ``slide_mpp`` (µm per level-0 pixel
  that was used: the file's, or the manifest's ``mpp`` override, whose column this replaces),
  ``source_stamp`` (size and modification time of the slide and annotation files: a slide
  rewritten under the same path, e.g. a regenerated synthetic cohort, is read again) and
  ``resample`` (the filter that made the image, ``data.slide.RESAMPLE_FILTERS``: a cache made
  with one filter is re-prepared, not reused, when the other is asked for; an index from before
  this column was made with ``area``, the only filter then), and ``glass_to_white`` only when
  ``prepare --glass-to-white T`` made the image (the threshold T; ``data.glass``, not the paper's:
  docs/fidelity.md, row ``glass-to-white``): without the flag the index and images are what they
  were before the flag existed, and a row made with another threshold, or with or without it, is
  re-prepared.
- one image per row: PNG (cv2, zlib level 1: lossless; the choice is measured in
  docs/benchmarks.md "## prepare") or ``.npy`` (``--format npy``; large, but memory-mappable).

Every file is written to a temporary name and moved into place with ``os.replace``, so a killed
run never leaves a half-written file under a final name. ``index.csv`` is rewritten after each
slide, which makes a rerun resume: rows whose cached file exists, complete, with the recorded
size (and the same slide, annotation, target mpp, resampling filter and glass threshold) are
skipped; a file cut short, or replaced by one of another size, is read again. A write the disk refuses (full, over
quota) stops prepare with one line naming the file (``data.files.WriteError``); the entries
already cached, the previous image of that row and ``index.csv`` stay as they were.

Under MPI (mpirun), rank r takes the pending rows r::size, writes its own ``index.part-<r>.csv``
after each slide, and rank 0 merges them into ``index.csv`` after a barrier.
"""
import glob
import hashlib
import os
import re
import struct
import sys
import time
from collections import namedtuple

import numpy as np
import pandas as pd

from data import mpi
from data.errors import InputError
from data.files import atomic_write_bytes, atomic_write_csv, remove_temporaries
from data.glass import check_threshold, glass_to_white as whiten_glass
from data.slide import RESAMPLE_FILTERS

INDEX = "index.csv"
EXTRA_COLUMNS = ("cache_file", "height", "width", "mpp", "slide_mpp")
# Written by prepare, not needed to read the cache: an index without it is simply re-prepared.
STAMP_COLUMN = "source_stamp"
# The resampling filter of each image; absent from indexes written before it existed (area).
RESAMPLE_COLUMN = "resample"
LEGACY_RESAMPLE = "area"
# The glass threshold of ``prepare --glass-to-white`` (data/glass.py); absent or "" = off.
GLASS_COLUMN = "glass_to_white"
_UNCHECKED = object()
PNG_COMPRESSION = 1  # zlib level: 1 is ~3x smaller than raw on tissue and about as fast as 0


class CacheError(InputError):
    """A missing or damaged cache entry or index. Message names the file."""


class PrepareError(InputError):
    """The manifest failed validation; ``problems`` lists every one."""

    def __init__(self, manifest, problems):
        self.problems = list(problems)
        super().__init__("{}: {} problem(s)".format(manifest, len(self.problems)))


# -- files --------------------------------------------------------------------------------------
def cache_name(slide_id, fmt="png"):
    """File name for a slide_id: the id itself when it is a safe name, else a sanitised id plus
    8 hex digits of its sha1 (so distinct ids never collide)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", slide_id)
    if safe != slide_id or safe.startswith("."):
        safe = "{}-{}".format(safe.lstrip("."), hashlib.sha1(slide_id.encode()).hexdigest()[:8])
    return "{}.{}".format(safe, fmt)


def encode_image(image, fmt):
    """RGB uint8 (H, W, 3) -> bytes of a PNG or .npy file."""
    if fmt == "png":
        import cv2
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]),
                               [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        if not ok:
            raise CacheError("cv2 could not encode a {}x{} PNG".format(*image.shape[:2]))
        return buf.tobytes()
    if fmt == "npy":
        import io
        bio = io.BytesIO()
        np.save(bio, np.ascontiguousarray(image))
        return bio.getvalue()
    raise CacheError("unknown cache format '{}' (png or npy)".format(fmt))


def image_size(path):
    """(height, width) of a cached file from its header alone, or None if absent/unreadable."""
    try:
        if path.endswith(".png"):
            with open(path, "rb") as f:
                head = f.read(24)
            if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
                return None
            w, h = struct.unpack(">II", head[16:24])
            return (h, w)
        if path.endswith(".npy"):
            a = np.load(path, mmap_mode="r")
            return tuple(a.shape[:2]) if a.ndim == 3 and a.shape[2] == 3 else None
    except (OSError, ValueError):
        return None
    return None


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"   # the empty IEND chunk that closes every PNG


def _png_complete(path):
    """True when the file ends with PNG's closing IEND chunk: a file cut short does not."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(PNG_END):
            return False
        f.seek(-len(PNG_END), os.SEEK_END)
        return f.read() == PNG_END


def entry_problem(path, height, width):
    """Why the cached file ``path`` is not a complete (height, width) image, in a few words, or
    None when it is. Reads its header and its last bytes only (no decoding): a missing, cut
    short or replaced file is found in constant time, whatever the image's size."""
    if not os.path.isfile(path):
        return "missing"
    size = image_size(path)
    if size is None:
        return "not a readable {} file".format(os.path.splitext(path)[1].lstrip(".").upper())
    if size != (int(height), int(width)):
        return "{}x{} px, but prepare wrote {}x{} px".format(size[0], size[1], height, width)
    try:
        if path.endswith(".png") and not _png_complete(path):
            return "cut short (no PNG end)"
    except OSError as e:
        return "unreadable ({})".format(e.strerror or e)
    return None


def damaged_entries(index):
    """[(slide_id, cache_file, problem)] of the rows of ``index`` (from ``load_index``: absolute
    ``cache_file``) whose cached image is missing, cut short or not the size the index says."""
    found = []
    for row in index[["slide_id", "cache_file", "height", "width"]].itertuples(index=False):
        problem = entry_problem(row.cache_file, row.height, row.width)
        if problem:
            found.append((str(row.slide_id), row.cache_file, problem))
    return found


def read_image(path):
    """RGB uint8 (H, W, 3) of one cached file."""
    if path.endswith(".npy"):
        try:
            image = np.load(path)
        except (OSError, ValueError) as e:
            raise CacheError("{}: cannot read ({})".format(path, e))
    else:
        import cv2
        if not os.path.isfile(path):
            raise CacheError("{}: cached image not found (rerun prepare)".format(path))
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise CacheError("{}: cannot decode the cached image (rerun prepare)".format(path))
        image = image[..., ::-1]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CacheError("{}: not an RGB uint8 image".format(path))
    return np.ascontiguousarray(image)


# -- index --------------------------------------------------------------------------------------
def _read_index_raw(path):
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise CacheError("{}: cannot read the cache index ({})".format(path, e))


def load_index(cache_dir, split=None):
    """``CACHE/index.csv`` as a DataFrame: ``cache_file`` absolute, ``label``/``height``/
    ``width`` int, ``mpp``/``slide_mpp`` float, ``chemo`` nullable Int64. ``split`` (a name or a
    list of names) keeps only those rows."""
    path = os.path.join(cache_dir, INDEX)
    if not os.path.isfile(path):
        raise CacheError("{}: no cache index (run `python -m reproduce prepare`)".format(path))
    df = _read_index_raw(path)
    missing = [c for c in ("slide_id", "label", "split") + EXTRA_COLUMNS if c not in df.columns]
    if missing:
        raise CacheError("{}: missing column(s) {}".format(path, ", ".join(missing)))
    if split is not None:
        wanted = [split] if isinstance(split, str) else list(split)
        df = df[df["split"].isin(wanted)]
    df = df.reset_index(drop=True)
    df["cache_file"] = [os.path.abspath(os.path.join(cache_dir, f)) for f in df["cache_file"]]
    for c in ("label", "height", "width"):
        df[c] = df[c].astype(int)
    for c in ("mpp", "slide_mpp"):
        df[c] = df[c].astype(float)
    if RESAMPLE_COLUMN not in df.columns:
        df[RESAMPLE_COLUMN] = LEGACY_RESAMPLE
    df[RESAMPLE_COLUMN] = df[RESAMPLE_COLUMN].replace("", LEGACY_RESAMPLE)
    if "chemo" in df.columns:
        df["chemo"] = pd.to_numeric(df["chemo"], errors="coerce").astype("Int64")
    return df


def glass_of(row):
    """The glass threshold (str, "" for off) that made an index row (a dict or Series)."""
    value = row.get(GLASS_COLUMN, "") if hasattr(row, "get") else ""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def check_made_with(index, cache_dir, target_mpp=None, resample=None, glass_to_white=_UNCHECKED):
    """Raises CacheError when a row of ``index`` (from ``load_index``) was prepared at another
    mpp, with another resampling filter or another glass threshold than the configuration asks
    for; the message says how to re-prepare. ``None`` skips the mpp and filter checks; the glass
    check runs when ``glass_to_white`` is given, and None there means off."""
    where = os.path.join(cache_dir, INDEX)
    if target_mpp is not None:
        target_mpp = float(target_mpp)
        off = index[(index["mpp"] - target_mpp).abs() > 1e-6 * target_mpp]
        if len(off):
            raise CacheError("{}: {} row(s) prepared at {} um/px, not data.target_mpp {} (e.g. "
                             "{}); rerun prepare with --target-mpp {}".format(
                                 where, len(off), off["mpp"].iloc[0], target_mpp,
                                 off["slide_id"].iloc[0], target_mpp))
    if resample is not None:
        column = index[RESAMPLE_COLUMN] if RESAMPLE_COLUMN in index.columns else None
        off = index[column != resample] if column is not None else index.iloc[:0]
        if len(off):
            raise CacheError("{}: {} row(s) resampled with '{}', not data.resample '{}' (e.g. "
                             "{}); rerun prepare with --resample {}".format(
                                 where, len(off), off[RESAMPLE_COLUMN].iloc[0], resample,
                                 off["slide_id"].iloc[0], resample))
    if glass_to_white is not _UNCHECKED:
        wanted = check_threshold(glass_to_white, "data.glass_to_white")
        wanted = "" if wanted is None else str(wanted)
        made = (index[GLASS_COLUMN].fillna("").astype(str) if GLASS_COLUMN in index.columns
                else pd.Series("", index=index.index))
        off = index[made != wanted]
        if len(off):
            said = lambda v: v or "off"    # noqa: E731
            raise CacheError("{}: {} row(s) prepared with glass_to_white {}, not "
                             "data.glass_to_white {} (e.g. {}); rerun prepare with "
                             "--glass-to-white {}".format(
                                 where, len(off), said(made[off.index[0]]), said(wanted),
                                 off["slide_id"].iloc[0], said(wanted)))


def read_cached(cache_dir, row_or_slide_id):
    """RGB uint8 (H, W, 3) of one cached row: an index row (Series, dict or namedtuple with
    ``cache_file``) or a slide_id. Checks the size against the index."""
    row = row_or_slide_id
    if isinstance(row, str):
        df = load_index(cache_dir)
        hit = df[df["slide_id"] == row]
        if hit.empty:
            raise CacheError("{}: slide_id '{}' is not in the cache".format(
                os.path.join(cache_dir, INDEX), row))
        row = hit.iloc[0]
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    path = os.path.join(cache_dir, get("cache_file"))
    image = read_image(path)
    h, w = get("height"), get("width")
    if h is not None and w is not None and image.shape[:2] != (int(h), int(w)):
        raise CacheError("{}: size {}x{} but the index says {}x{} (rerun prepare)".format(
            path, image.shape[0], image.shape[1], h, w))
    return image


# -- prepare ------------------------------------------------------------------------------------
def _entry_ok(cache_dir, old, new, target_mpp, resample, glass=None):
    """Is the old index row a complete, matching cache of the new manifest row?"""
    try:
        same = (old["path"] == new["path"]
                and old.get("annotation", "") == new.get("annotation", "")
                and old.get(STAMP_COLUMN, "") == source_stamp(new)
                and (old.get(RESAMPLE_COLUMN) or LEGACY_RESAMPLE) == resample
                and glass_of(old) == ("" if glass is None else str(glass))
                and abs(float(old["mpp"]) - target_mpp) <= 1e-9 * target_mpp)
        return same and entry_problem(os.path.join(cache_dir, old["cache_file"]),
                                      old["height"], old["width"]) is None
    except (KeyError, ValueError, TypeError, OSError):
        return False


def _merge_partials(cache_dir):
    """Fold index.part-*.csv (from MPI ranks, maybe of a killed run) into index.csv."""
    parts = sorted(glob.glob(os.path.join(cache_dir, "index.part-*.csv")))
    if not parts:
        return
    path = os.path.join(cache_dir, INDEX)
    frames = [_read_index_raw(path)] if os.path.isfile(path) else []
    frames += [_read_index_raw(p) for p in parts]
    merged = pd.concat(frames, ignore_index=True, sort=False).fillna("")
    merged = merged.drop_duplicates("slide_id", keep="last")
    atomic_write_csv(merged, path)
    for p in parts:
        os.remove(p)


def source_stamp(row):
    """'size:mtime_ns' of the row's slide file (and annotation), to notice a rewritten source."""
    parts = []
    for key in ("path", "annotation"):
        path = row.get(key, "")
        if isinstance(path, str) and path:
            st = os.stat(path)
            parts.append("{}:{}".format(st.st_size, st.st_mtime_ns))
    return "|".join(parts)


def _index_row(row, columns, cache_file, shape, target_mpp, slide_mpp, resample, glass=None):
    out = {c: ("" if pd.isna(row[c]) else str(row[c])) for c in columns if c != "mpp"}
    out.update(cache_file=cache_file, height=str(shape[0]), width=str(shape[1]),
               mpp=repr(float(target_mpp)), slide_mpp=repr(float(slide_mpp)),
               **{STAMP_COLUMN: source_stamp(row), RESAMPLE_COLUMN: resample})
    if glass is not None:    # no column without the flag: such a cache is as it always was
        out[GLASS_COLUMN] = str(glass)
    return out


def _order(frame, manifest_ids):
    """Rows of the manifest first, in its order, then any others (other splits, older rows)."""
    pos = {s: i for i, s in enumerate(manifest_ids)}
    key = [pos.get(s, len(pos)) for s in frame["slide_id"]]
    return frame.assign(_k=key).sort_values("_k", kind="mergesort").drop(columns="_k")


# How prepare makes every image of a call: the same for each row and each rank.
Recipe = namedtuple("Recipe", "target_mpp resample glass fmt max_strip_pixels")


def _recipe(manifest_path, target_mpp, resample, glass_to_white, fmt, max_strip_pixels):
    """The checked settings of a prepare call; PrepareError (on the manifest) names a bad one."""
    target_mpp = float(target_mpp)
    if not target_mpp > 0:
        raise PrepareError(manifest_path, ["--target-mpp must be > 0, got {}".format(target_mpp)])
    if resample not in RESAMPLE_FILTERS:
        raise PrepareError(manifest_path, ["resample must be one of {}, got {!r}".format(
            "/".join(RESAMPLE_FILTERS), resample)])
    try:
        glass = check_threshold(glass_to_white, "glass_to_white")
    except InputError as e:
        raise PrepareError(manifest_path, [str(e)])
    return Recipe(target_mpp, resample, glass, fmt, max_strip_pixels)


def _selected_rows(manifest_path, splits):
    """The typed manifest rows of ``splits`` (every row when None), in manifest order, after the
    whole manifest (and ``splits``) passed validation: PrepareError lists every problem."""
    from data.manifest import coerce, load_manifest, validate
    df = load_manifest(manifest_path)
    base = os.path.dirname(os.path.abspath(manifest_path))
    problems = validate(df, base)
    if splits:
        bad = [s for s in splits if s not in ("train", "val", "test")]
        problems += ["--split '{}' is not train/val/test".format(s) for s in bad]
    if problems:
        raise PrepareError(manifest_path, problems)
    rows = coerce(df, base)
    if splits:
        rows = rows[rows["split"].isin(splits)].reset_index(drop=True)
    return rows


def _open_cache(cache_dir, comm, rank):
    """Creates the folder; rank 0 clears a killed run's temporaries and folds its partial
    indexes into index.csv while the other ranks wait, so that every rank plans from one index."""
    os.makedirs(cache_dir, exist_ok=True)
    if rank == 0:
        remove_temporaries(cache_dir)
        _merge_partials(cache_dir)
    if comm is not None:
        comm.Barrier()


def _plan(cache_dir, rows, recipe):
    """(done, pending, kept, outdated): the rows already cached as ``recipe`` asks, the rows to
    read, the index rows kept as they are (the valid ones of this manifest and those of other
    rows), and {slide_id: index row} of the pending rows that have an older entry (another mpp,
    filter or source): that entry stays in the index until its row is read again, so that a
    run stopped on the way (killed, a full disk) leaves it as it was."""
    index_path = os.path.join(cache_dir, INDEX)
    old = _read_index_raw(index_path) if os.path.isfile(index_path) else None
    old_rows = {} if old is None else {r["slide_id"]: r for r in old.to_dict("records")}
    done, pending = [], []
    for _, r in rows.iterrows():
        o = old_rows.get(r["slide_id"])
        ok = o is not None and _entry_ok(cache_dir, o, r, recipe.target_mpp, recipe.resample,
                                         recipe.glass)
        (done if ok else pending).append(r)
    redo = {r["slide_id"] for r in pending}
    kept = [o for s, o in old_rows.items() if s not in redo]
    outdated = {s: o for s, o in old_rows.items() if s in redo}
    return done, pending, kept, outdated


def _read_row(row, recipe):
    """(image at the target mpp, level-0 mpp, level-0 pixels read) of one manifest row: the
    whole slide, or the bounding box of its annotation's polygons (outside them white)."""
    from data.nodes import bounding_box, crop_polygons, load_polygons
    from data.slide import Slide
    mpp = None if "mpp" not in row.index or pd.isna(row["mpp"]) else float(row["mpp"])
    annotation = row["annotation"] if "annotation" in row.index else ""
    kw = dict(resample=recipe.resample)
    if recipe.max_strip_pixels is not None:
        kw["max_strip_pixels"] = recipe.max_strip_pixels
    with Slide(row["path"], mpp=mpp) as s:
        if annotation:
            polygons = load_polygons(annotation)
            box = bounding_box(polygons)
            return crop_polygons(s, polygons, recipe.target_mpp, **kw), s.mpp[0], box[2] * box[3]
        area0 = s.dimensions[0] * s.dimensions[1]
        return s.read(recipe.target_mpp, **kw), s.mpp[0], area0


def _store(cache_dir, row, columns, image, slide_mpp, recipe):
    """Writes a row's image (its glass whitened when the recipe asks) under its final name,
    atomically; returns the row's line of the index."""
    if recipe.glass is not None:
        whiten_glass(image, recipe.glass, copy=False)
    name = cache_name(row["slide_id"], recipe.fmt)
    atomic_write_bytes(os.path.join(cache_dir, name), encode_image(image, recipe.fmt))
    return _index_row(row, columns, name, image.shape, recipe.target_mpp, slide_mpp,
                      recipe.resample, recipe.glass)


def _save_progress(cache_dir, size, rank, kept, new, manifest_ids):
    """After each slide, so that a killed run resumes: a lone rank rewrites index.csv (kept +
    new rows, manifest order); under MPI each rank writes its own ``index.part-<rank>.csv``."""
    if size == 1:
        frame = pd.DataFrame(kept + new).fillna("")
        atomic_write_csv(_order(frame, manifest_ids), os.path.join(cache_dir, INDEX))
    else:
        atomic_write_csv(pd.DataFrame(new).fillna(""),
                         os.path.join(cache_dir, "index.part-{}.csv".format(rank)))


def _cache_rows(mine, rows, kept, outdated, cache_dir, recipe, rank, size, progress):
    """Reads and stores this rank's rows, one at a time; a row's ``outdated`` entry (see
    ``_plan``) leaves the index once the row is stored or found unreadable. Returns this rank's
    (rows cached, level-0 megapixels, output megapixels, seconds, failed: one line per
    unreadable row)."""
    from tqdm import tqdm
    from data.nodes import AnnotationError
    from data.slide import SlideError
    columns, ids = list(rows.columns), list(rows["slide_id"])
    new, failed = [], []
    mp0 = mp_out = 0.0
    t0 = time.time()
    bar = tqdm(mine, unit="slide", disable=not progress or rank != 0, file=sys.stderr,
               desc="prepare" + (" (rank 0 of {})".format(size) if size > 1 else ""))
    for r in bar:
        try:
            image, slide_mpp, area0 = _read_row(r, recipe)
        except (SlideError, AnnotationError) as e:
            failed.append("{}: {}".format(r["slide_id"], e))
            if outdated.pop(r["slide_id"], None) is not None:
                _save_progress(cache_dir, size, rank, kept + list(outdated.values()), new, ids)
            continue
        new.append(_store(cache_dir, r, columns, image, slide_mpp, recipe))
        outdated.pop(r["slide_id"], None)
        mp0 += area0 / 1e6
        mp_out += image.shape[0] * image.shape[1] / 1e6
        bar.set_postfix(MPps="{:.1f}".format(mp0 / max(1e-9, time.time() - t0)))
        _save_progress(cache_dir, size, rank, kept + list(outdated.values()), new, ids)
    bar.close()
    return (len(new), mp0, mp_out, time.time() - t0, failed)


def _combine(comm, rank, counts, cache_dir, manifest_ids):
    """Every rank's counts, on every rank. Under MPI, once all ranks are done, rank 0 merges
    their partial indexes into index.csv, in manifest order."""
    if comm is None:
        return [counts]
    comm.Barrier()
    everyone = comm.gather(counts, root=0)
    if rank == 0:
        _merge_partials(cache_dir)
        index_path = os.path.join(cache_dir, INDEX)
        if os.path.isfile(index_path):
            atomic_write_csv(_order(_read_index_raw(index_path), manifest_ids), index_path)
    return comm.bcast(everyone, root=0)


def _summary(rows, skipped, counts, rank, size):
    """prepare's return value from every rank's counts (the slowest rank's seconds)."""
    seconds = max(c[3] for c in counts)
    summary = dict(rows=rows, cached=sum(c[0] for c in counts), skipped=skipped,
                   failed=[f for c in counts for f in c[4]], ranks=size, rank=rank,
                   per_rank=[c[0] for c in counts], seconds=seconds,
                   level0_megapixels=sum(c[1] for c in counts),
                   output_megapixels=sum(c[2] for c in counts))
    summary["level0_megapixels_per_s"] = summary["level0_megapixels"] / max(seconds, 1e-9)
    summary["output_megapixels_per_s"] = summary["output_megapixels"] / max(seconds, 1e-9)
    return summary


def prepare(manifest_path, cache_dir, target_mpp=2.28, splits=None, fmt="png", progress=True,
            log=None, max_strip_pixels=None, resample="area", glass_to_white=None):
    """Read every (selected) manifest row once at ``target_mpp`` into ``cache_dir``, resampled
    with ``resample`` ("area" or "cubic", see ``data.slide``; docs/fidelity.md, row
    ``resample``). ``glass_to_white``: None (off, the paper's way) or a threshold 1-255 whose
    glass becomes pure white (``data.glass``; not in the paper: docs/fidelity.md, row
    ``glass-to-white``). A row cached with another filter, mpp or glass threshold is read again.
    ``log`` is accepted and unused: progress goes to the bar, results to the return value.

    Validates the whole manifest first (raises PrepareError with every problem). Returns a dict:
    rows, cached (this run, all ranks), skipped, failed (list of one-line reasons), seconds,
    level0_megapixels, output_megapixels, and the two throughputs in megapixels per second.
    """
    comm, rank, size = mpi.communicator()
    recipe = _recipe(manifest_path, target_mpp, resample, glass_to_white, fmt, max_strip_pixels)
    rows = _selected_rows(manifest_path, splits)
    _open_cache(cache_dir, comm, rank)
    done, pending, kept, outdated = _plan(cache_dir, rows, recipe)
    mine = _cache_rows(pending[rank::size], rows, kept, outdated, cache_dir, recipe, rank, size,
                       progress)
    counts = _combine(comm, rank, mine, cache_dir, list(rows["slide_id"]))
    return _summary(len(rows), len(done), counts, rank, size)
