"""CAMELYON lesion annotations: ASAP XML outlines as tumour polygons (``data.nodes`` format).

The CAMELYON16 and CAMELYON17 challenges publish their lesion annotations as XML files of the
ASAP viewer, one per slide, named after it (``tumor_001.xml``, ``test_001.xml``,
``patient_004_node_4.xml``)::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates>
            <Coordinate Order="0" X="12711.2998" Y="88778.1016" />
            ...
      <AnnotationGroups>
        <Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>

Coordinates are level-0 pixels (x right, y down), the frame of ``data.nodes.load_polygons``.
What this reader relies on:

- the CAMELYON16 data README: the files "may have three groups of annotations ("_0", "_1", or
  "_2")"; "_0" and "_1" are tumour areas, "_2" are non-tumour areas "cut out from the original
  annotations in the first two groups";
- the CAMELYON17 data README: two groups, "metastases" (tumour) and "normal" (non-tumour areas
  cut out of the "metastases" annotations);
- the mask recipe on the CAMELYON17 data page (ASAP's ``AnnotationToMask`` with
  ``conversion_order ['_0', '_1', '_2']``, resp. ``['metastases', 'normal']``): the groups are
  painted in that order, so a cut-out wins over the tumour it overlaps;
- public CAMELYON16 readers (e.g. NCRF's ``annotation.py``) also take the group "Tumor" as
  tumour; some exports name the cut-out group "Exclusion".

So, matched case-insensitively: tumour groups ``TUMOUR_GROUPS``, cut-out groups
``EXCLUSION_GROUPS``; an annotation whose group is a subgroup (``<Group PartOfGroup=..>``) of one
of them counts as that one; other groups are not tumour and are ignored. The tumour is the union
of the tumour outlines minus the union of the cut-outs (computed exactly with Shapely), returned
as polygons whose holes are the cut-outs, so that every area (``data.nodes.area_um2``,
``stats.localisation``) already has them subtracted. Outline types ``Polygon``, ``Rectangle``
and ``Spline`` (taken through its control points) enclose an area; ``Dot``, ``PointSet`` and
outlines of fewer than 3 points enclose none and are skipped. Self-crossing hand-drawn outlines
are made valid first (``shapely.validation.make_valid``: the even-odd area, as a polygon fill
draws it). A decimal comma (``X="12711,2998"``, written by ASAP in some locales) is read as a
point.
"""
import xml.etree.ElementTree as ET

import numpy as np

from data.errors import AnnotationError

ROOT = "ASAP_Annotations"
TUMOUR_GROUPS = ("tumor", "_0", "_1", "metastases")
EXCLUSION_GROUPS = ("_2", "normal", "exclusion")
AREA_TYPES = ("polygon", "rectangle", "spline")


def is_asap_file(path):
    """True when ``path`` ends in .xml or its content starts like XML ('<' first)."""
    if str(path).lower().endswith(".xml"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def load_asap(path):
    """Tumour polygons of an ASAP XML file: a list of polygons, each a list of rings (exterior
    first, then holes), each ring an (N, 2) float64 array of level-0 pixels."""
    tumour, cut = read_outlines(path)
    area = _region(tumour)
    if area.is_empty:
        raise AnnotationError("{}: no tumour outline (groups {}) that encloses an area".format(
            path, "/".join(TUMOUR_GROUPS)))
    if cut:
        area = area.difference(_region(cut))
    polygons = as_polygons(area)
    if not polygons:
        raise AnnotationError("{}: the cut-out groups ({}) cover every tumour outline".format(
            path, "/".join(EXCLUSION_GROUPS)))
    return polygons


def read_outlines(path):
    """(tumour rings, cut-out rings) of the file, each ring an (N, 2) float64 array."""
    root = _parse(path)
    roles = group_roles(root)
    tumour, cut = [], []
    for ann in root.iter("Annotation"):
        role = roles.get(_key(ann.get("PartOfGroup")))
        if role is None or _key(ann.get("Type") or "polygon") not in AREA_TYPES:
            continue
        ring = _coordinates(ann, path)
        if len(np.unique(ring, axis=0)) >= 3:
            (tumour if role == "tumour" else cut).append(ring)
    return tumour, cut


def _parse(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise AnnotationError("{}: cannot read ASAP XML ({})".format(path, e))
    if root.tag != ROOT:
        raise AnnotationError("{}: root element <{}>, not <{}> (an ASAP annotation file)".format(
            path, root.tag, ROOT))
    return root


def _key(name):
    return (name or "").strip().lower()


def group_roles(root):
    """{lower-case group name: 'tumour' | 'cut'} for the known groups and every group declared
    under <AnnotationGroups> that belongs (through its PartOfGroup chain) to one of them."""
    roles = {g: "tumour" for g in TUMOUR_GROUPS}
    roles.update({g: "cut" for g in EXCLUSION_GROUPS})
    parent = {_key(g.get("Name")): _key(g.get("PartOfGroup")) for g in root.iter("Group")}
    for name in parent:
        seen, g = set(), name
        while g in parent and g not in roles and g not in seen:   # a cycle ends the walk
            seen.add(g)
            g = parent[g]
        if g in roles and name not in roles:
            roles[name] = roles[g]
    return roles


def _number(text, what, path, name):
    try:
        text = text.strip()
        if "," in text and "." not in text:
            text = text.replace(",", ".")
        value = float(text)
    except (AttributeError, ValueError):
        raise AnnotationError("{}: annotation '{}': {} '{}' is not a number".format(
            path, name, what, text))
    if not np.isfinite(value):
        raise AnnotationError("{}: annotation '{}': {} '{}' is not finite".format(
            path, name, what, text))
    return value


def _coordinates(ann, path):
    """(N, 2) float64 ring of an <Annotation>, its points in their Order (file order on ties)."""
    name = ann.get("Name", "?")
    points = []
    for k, c in enumerate(ann.iter("Coordinate")):
        order = c.get("Order")
        rank = _number(order, "Order", path, name) if order is not None else k
        points.append((rank, k, _number(c.get("X"), "X", path, name),
                       _number(c.get("Y"), "Y", path, name)))
    points.sort()
    return np.array([(x, y) for _, _, x, y in points], np.float64).reshape(-1, 2)


def _polygonal(geometry):
    """The Polygon parts of any Shapely geometry (lines and points of a collection dropped)."""
    kind = geometry.geom_type
    if kind == "Polygon":
        return [] if geometry.is_empty else [geometry]
    if kind in ("MultiPolygon", "GeometryCollection"):
        return [p for g in geometry.geoms for p in _polygonal(g)]
    return []


def _region(rings):
    """The union of the areas of ``rings`` as one Shapely geometry."""
    from shapely.geometry import Polygon
    from shapely.ops import unary_union
    from shapely.validation import make_valid
    parts = []
    for ring in rings:
        shape = Polygon(ring)
        parts.extend(_polygonal(shape if shape.is_valid else make_valid(shape)))
    return unary_union(parts)


def as_polygons(area):
    """A Shapely area as polygons in ``data.nodes`` format (exterior ring, then its holes)."""
    out = []
    for poly in _polygonal(area):
        rings = [poly.exterior] + list(poly.interiors)
        out.append([np.asarray(r.coords, np.float64)[:, :2] for r in rings])
    return out
