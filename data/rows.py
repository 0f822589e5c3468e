"""Reading a manifest's rows (data.manifest) for evaluation: which rows, their cells, and what
each row names on disk -- its prepared image, its slide's mpp, a node crop's origin, its tumour
outlines.

A row is a pandas Series of one manifest line as ``data.manifest.load_manifest`` gives it
(strings, blank = ''), or of ``coerce``'s typed copy, or of the prepare cache's index. Relative
paths resolve against ``base_dir``, the manifest's folder.
"""
import numpy as np

from data.errors import InputError

# The manifest's subgroup columns, in the order of the predictions table (after ``level``).
SUBGROUP_COLUMNS = ("level", "size_category", "subtype", "chemo")


class RowsError(InputError):
    """The manifest has no rows to give for a selection (message names it)."""


def select_rows(manifest, split):
    """Rows of ``split`` ('all' = every row), in manifest order; RowsError when none."""
    rows = manifest if split == "all" else manifest[manifest["split"].astype(str) == split]
    if len(rows) == 0:
        raise RowsError("manifest has no rows with split == {!r}".format(split))
    return rows.reset_index(drop=True)


def cell(row, column, default=None):
    """The row's value in ``column``; ``default`` when the column is absent or the cell blank
    (None, NaN or '')."""
    if column not in row.index:
        return default
    v = row[column]
    try:
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v) == "":
            return default
    except TypeError:
        pass
    return v


def is_node(row):
    """Whether the row is a single lymph node with its outline (``level`` node, an
    ``annotation``): the row's image is the node's crop, not the whole slide."""
    return cell(row, "level", "slide") == "node" and cell(row, "annotation") is not None


def node_origin(row, base_dir):
    """Level-0 (x, y) of the node crop's bounding box (data.nodes); (0, 0) for whole slides."""
    from data.manifest import resolve
    if not is_node(row):
        return (0.0, 0.0)
    from data.nodes import bounding_box, load_polygons
    x0, y0, _, _ = bounding_box(load_polygons(resolve(base_dir, str(row["annotation"]))))
    return (float(x0), float(y0))


def tumour_polygons(row, base_dir):
    """(tumour, within) of a row for the CAM's outlines and localisation: the polygons of its
    ``foci`` GeoJSON (tumour annotations in level-0 pixels; None when the column is absent or
    blank) and, for a node row, its ``annotation`` outline (the node; else None)."""
    from data.manifest import resolve
    from data.nodes import load_polygons
    foci = cell(row, "foci")
    if foci is None:
        return None, None
    tumour = load_polygons(resolve(base_dir, str(foci)))
    within = load_polygons(resolve(base_dir, str(row["annotation"]))) if is_node(row) else None
    return tumour, within


def read_prepared(row, base_dir, target_mpp, resample="area"):
    """Prepared image of a row read from its slide (no cache): the whole slide, or the node's
    bounding box with everything outside its polygon white (data.nodes.crop_node)."""
    from data import read_slide
    from data.manifest import resolve
    from data.nodes import crop_node
    mpp = cell(row, "mpp")
    mpp = None if mpp is None else float(mpp)
    path = resolve(base_dir, str(row["path"]))
    if is_node(row):
        return crop_node(path, resolve(base_dir, str(row["annotation"])), target_mpp, mpp=mpp,
                         resample=resample)
    return read_slide(path, target_mpp, mpp=mpp, resample=resample)


def level0_mpp_of(row, base_dir, index_row=None):
    """µm per level-0 pixel of the row's slide: the cache's record of it, else the manifest
    override, else the slide file's."""
    from data.manifest import resolve
    if index_row is not None and cell(index_row, "slide_mpp") is not None:
        return float(index_row["slide_mpp"])
    mpp = cell(row, "mpp")
    if mpp is not None:
        return float(mpp)
    from data.slide import slide_info
    return float(slide_info(resolve(base_dir, str(row["path"])))["mpp_x"])
