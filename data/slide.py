"""Whole-slide images through OpenSlide, read at a physical resolution (µm per pixel).

The paper resizes 40x scans (NanoZoomer, 0.228 µm/px) to 4x, i.e. about 2.28 µm/px (it prints
"22.5": docs/fidelity.md, row ``target-mpp``). Resampling by physical mpp instead of by objective
makes any scanner work.

Output size (pixels at ``target_mpp``), per axis::

    out_w = round(level0_width  * mpp_x / target_mpp)
    out_h = round(level0_height * mpp_y / target_mpp)

so the output covers exactly the slide; its true pixel size differs from ``target_mpp`` by at most
half a pixel over the whole width (a relative 1/(2 out_w)).

How it is read:
- the pyramid level used is the coarsest whose downsample is <= target_mpp / mpp (the level "just
  finer than or equal to" the target), so no detail finer than the target is thrown away before
  the antialiasing filter;
- it is read in horizontal strips of at most ``max_strip_pixels`` level pixels, so memory is
  bounded by one strip plus the output (a 40x slide is 100k x 80k px: level 0 is never held);
- ``resample="area"`` (the default): the area (box) filter of cv2.INTER_AREA, written as a
  separable linear map ``out = Ry . img . Rx^T`` with sparse matrices of overlap weights
  (``_resample_matrix``). Every output row depends only on the source rows its box covers, so
  strips give the same numbers as one read, and region boxes may start at fractional level
  pixels. Enlargement (target finer than level 0) uses the same overlap weights, as
  cv2.INTER_AREA does. The paper names no filter; an area filter is the antialiasing one
  (docs/fidelity.md, row ``resample``);
- ``resample="cubic"``: the released code's way (aetherAI/whole-slide-cnn): the level region is
  read whole (composited and rounded to uint8, strip by strip) and resized to the same output
  size with ``cv2.resize(..., interpolation=cv2.INTER_CUBIC)`` (Keys a = -0.75, sample at
  ``(i + 0.5) * s - 0.5``, no antialiasing when shrinking, edges replicated). A region box that
  starts or ends at a fractional level pixel uses ``cv2.warpAffine`` with the same cubic kernel
  and the same sampling positions instead. Memory: the level region as uint8 (3 bytes/px);
- transparent pixels (OpenSlide's alpha: unscanned tiles, outside the slide) are composited onto
  white: rgb * a/255 + 255 * (1 - a/255) (docs/fidelity.md, row ``glass-white``).
"""
import math
import os
import warnings

import numpy as np
import scipy.sparse

from data.errors import InputError

# Level pixels held per strip (RGBA uint8 + float32 copies: about 20 bytes/px => ~160 MB).
DEFAULT_STRIP_PIXELS = 8 * 1024 * 1024
# The resampling filters of ``Slide.read`` (docs/fidelity.md, row ``resample``).
RESAMPLE_FILTERS = ("area", "cubic")
# A level whose downsample exceeds the wanted one by this relative amount still counts as "equal"
# (pyramid downsamples are often 4.0002 for an intended 4).
_LEVEL_TOLERANCE = 1e-3


class SlideError(InputError):
    """A slide that cannot be used. ``str(e)`` is one line: ``<path>: <reason>``."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__("{}: {}".format(self.path, self.reason))

    def __reduce__(self):  # picklable (multiprocessing, MPI)
        return (SlideError, (self.path, self.reason))


def _openslide():
    try:
        import openslide
    except ImportError as e:  # libopenslide0 missing: say what to install
        raise SlideError("openslide", "cannot import openslide ({}); install libopenslide0 "
                         "and openslide-python".format(e))
    return openslide


class Slide:
    """An open whole-slide image with its geometry in level-0 pixels.

    Attributes: ``path``; ``dimensions`` (level-0 width, height in pixels); ``mpp`` (x, y µm per
    level-0 pixel; from the file, or ``mpp`` given here, which wins); ``mpp_from_file`` (x, y or
    None); ``level_dimensions`` and ``level_downsamples`` (as OpenSlide reports); ``vendor``.
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, path, mpp=None):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise SlideError(self.path, "no such file" if not os.path.exists(self.path)
                             else "not a regular file")
        if not os.access(self.path, os.R_OK):
            raise SlideError(self.path, "not readable (permission denied)")
        openslide = _openslide()
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(self.path, _unsupported_reason(self.path))
        except openslide.OpenSlideError as e:
            raise SlideError(self.path, "corrupt or truncated slide ({})".format(e))
        except Exception as e:  # e.g. libtiff errors surfacing as other types
            raise SlideError(self.path, "cannot open ({}: {})".format(type(e).__name__, e))
        props = self._osr.properties
        self.vendor = props.get("openslide.vendor", "unknown")
        self.dimensions = tuple(int(v) for v in self._osr.dimensions)
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._osr.level_dimensions]
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        self.mpp_from_file = _file_mpp(props)
        if mpp is not None and not (isinstance(mpp, float) and math.isnan(mpp)):
            mpp = float(mpp)
            if not mpp > 0:
                self.close()
                raise SlideError(self.path, "mpp override must be > 0, got {}".format(mpp))
            if self.mpp_from_file and abs(self.mpp_from_file[0] - mpp) > 0.01 * mpp:
                warnings.warn("{}: mpp override {} differs from the file's {}; using {}".format(
                    self.path, mpp, self.mpp_from_file[0], mpp))
            self.mpp = (mpp, mpp)
        elif self.mpp_from_file:
            self.mpp = self.mpp_from_file
        else:
            self.close()
            raise SlideError(self.path, "no mpp in the file (openslide.mpp-x/y missing) and no "
                                        "override: give mpp (manifest column 'mpp')")

    # -- lifetime -----------------------------------------------------------------------------
    def close(self):
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
            self._osr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def info(self):
        """The slide's geometry as a plain dict (level-0 pixels, µm/px)."""
        return dict(path=self.path, vendor=self.vendor, width=self.dimensions[0],
                    height=self.dimensions[1], mpp_x=self.mpp[0], mpp_y=self.mpp[1],
                    mpp_from_file=self.mpp_from_file is not None,
                    level_dimensions=list(self.level_dimensions),
                    level_downsamples=list(self.level_downsamples))

    # -- geometry -----------------------------------------------------------------------------
    def output_size(self, target_mpp, region=None):
        """(width, height) in pixels at ``target_mpp`` of the whole slide or of ``region``
        (x, y, w, h in level-0 pixels): round(size_level0 * mpp / target_mpp) per axis."""
        _check_target(self.path, target_mpp)
        _, _, w0, h0 = self._region(region)
        return (max(1, int(round(w0 * self.mpp[0] / target_mpp))),
                max(1, int(round(h0 * self.mpp[1] / target_mpp))))

    def best_level(self, target_mpp):
        """Index of the coarsest level with downsample <= target_mpp / mpp (level 0 if none)."""
        _check_target(self.path, target_mpp)
        wanted = target_mpp / max(self.mpp)
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= wanted * (1 + _LEVEL_TOLERANCE) and ds > self.level_downsamples[best]:
                best = i
        return best

    def _region(self, region):
        if region is None:
            return (0.0, 0.0, float(self.dimensions[0]), float(self.dimensions[1]))
        x, y, w, h = (float(v) for v in region)
        if not (w > 0 and h > 0):
            raise SlideError(self.path, "empty region {}".format(region))
        return (x, y, w, h)

    # -- reading ------------------------------------------------------------------------------
    def read(self, target_mpp, region=None, max_strip_pixels=DEFAULT_STRIP_PIXELS,
             resample="area"):
        """RGB uint8 (H, W, 3) at ``target_mpp`` µm/px of the whole slide or of ``region``
        = (x, y, w, h) in level-0 pixels (may extend past the slide: that part is white).
        ``resample``: "area" (exact box filter, bounded memory) or "cubic" (cv2.INTER_CUBIC of
        the level read, as the released code); see the module docstring."""
        if resample not in RESAMPLE_FILTERS:
            raise SlideError(self.path, "resample must be one of {}, got {!r}".format(
                "/".join(RESAMPLE_FILTERS), resample))
        out_w, out_h = self.output_size(target_mpp, region)
        x0, y0, w0, h0 = self._region(region)
        level = self.best_level(target_mpp)
        lw, lh = self.level_dimensions[level]
        # level pixels per level-0 pixel, per axis (from the sizes, as OpenSlide lays levels out)
        fx, fy = lw / self.dimensions[0], lh / self.dimensions[1]
        # The box in level coordinates, and the integer level pixels that hold it.
        bx0, by0, bw, bh = x0 * fx, y0 * fy, w0 * fx, h0 * fy
        sx0, sy0 = int(math.floor(bx0)), int(math.floor(by0))
        sw = int(math.ceil(bx0 + bw)) - sx0
        sh = int(math.ceil(by0 + bh)) - sy0
        ds = self.level_downsamples[level]
        if resample == "cubic":
            return self._read_cubic(level, ds, (sx0, sy0, sw, sh), (bx0 - sx0, by0 - sy0, bw, bh),
                                    (out_w, out_h), max_strip_pixels)
        rx = _resample_matrix(bx0 - sx0, bw, out_w, sw)          # (out_w, sw)
        ry = _resample_matrix(by0 - sy0, bh, out_h, sh)          # (out_h, sh)
        out = np.empty((out_h, out_w, 3), np.uint8)
        # Output rows per strip: their source rows must fit in max_strip_pixels.
        rows_per_out = max(1.0, bh / out_h)
        k = max(1, int(max_strip_pixels // max(1, sw) / rows_per_out) - 2)
        for o0 in range(0, out_h, k):
            o1 = min(out_h, o0 + k)
            band = ry[o0:o1]
            cols = band.indices
            r0 = int(cols.min()) if cols.size else 0
            r1 = int(cols.max()) + 1 if cols.size else 1
            rgb = self._read_rgb(level, ds, sx0, sy0 + r0, sw, r1 - r0)  # (r1-r0, sw, 3) f32
            band = band[:, r0:r1]
            tmp = band.dot(rgb.reshape(r1 - r0, sw * 3))                 # (o1-o0, sw*3)
            tmp = tmp.reshape(o1 - o0, sw, 3).transpose(1, 0, 2).reshape(sw, -1)
            res = rx.dot(tmp)                                            # (out_w, (o1-o0)*3)
            res = res.reshape(out_w, o1 - o0, 3).transpose(1, 0, 2)
            out[o0:o1] = np.clip(np.rint(res), 0, 255).astype(np.uint8)
        return out

    def _read_level_uint8(self, level, ds, sx0, sy0, sw, sh, max_strip_pixels):
        """Level pixels [sx0, sx0+sw) x [sy0, sy0+sh) as uint8 RGB on white, read in strips."""
        level_rgb = np.empty((sh, sw, 3), np.uint8)
        rows = max(1, int(max_strip_pixels // max(1, sw)))
        for r0 in range(0, sh, rows):
            r1 = min(sh, r0 + rows)
            rgb = self._read_rgb(level, ds, sx0, sy0 + r0, sw, r1 - r0)
            level_rgb[r0:r1] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return level_rgb

    def _read_cubic(self, level, ds, source, box, size, max_strip_pixels):
        """cv2.INTER_CUBIC from the level read: ``source`` = (sx0, sy0, sw, sh) integer level
        pixels, ``box`` = (x, y, w, h) the wanted box inside them (level pixels), ``size`` =
        (out_w, out_h). An integer box is ``cv2.resize`` of the read (the released code's
        call); a fractional one is ``cv2.warpAffine`` sampling output pixel i at source
        ``x + (i + 0.5) * w / out_w - 0.5``, which is cv2.resize's own mapping moved by x."""
        import cv2
        sx0, sy0, sw, sh = source
        bx, by, bw, bh = box
        out_w, out_h = size
        level_rgb = self._read_level_uint8(level, ds, sx0, sy0, sw, sh, max_strip_pixels)
        if max(abs(bx), abs(by), abs(bw - sw), abs(bh - sh)) < 1e-6:   # the whole read
            return cv2.resize(level_rgb, (out_w, out_h), interpolation=cv2.INTER_CUBIC)
        s_x, s_y = bw / float(out_w), bh / float(out_h)
        m = np.array([[s_x, 0.0, bx + 0.5 * s_x - 0.5], [0.0, s_y, by + 0.5 * s_y - 0.5]])
        return cv2.warpAffine(level_rgb, m, (out_w, out_h),
                              flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def _read_rgb(self, level, ds, lx, ly, w, h):
        """Level pixels [lx, lx+w) x [ly, ly+h) as float32 RGB composited onto white."""
        openslide = _openslide()
        loc = (int(round(lx * ds)), int(round(ly * ds)))  # OpenSlide wants level-0 coordinates
        try:
            img = self._osr.read_region(loc, level, (int(w), int(h)))
        except openslide.OpenSlideError as e:
            raise SlideError(self.path, "corrupt or truncated slide ({})".format(e))
        except Exception as e:
            raise SlideError(self.path, "read failed ({}: {})".format(type(e).__name__, e))
        return composite_on_white(np.asarray(img))


def composite_on_white(rgba):
    """RGBA uint8 (non-premultiplied, as openslide-python returns) -> float32 RGB on white:
    rgb * a/255 + 255 * (1 - a/255). Fully transparent pixels (unscanned) become 255."""
    rgba = np.asarray(rgba)
    rgb = rgba[..., :3].astype(np.float32)
    if rgba.shape[-1] == 4:
        a = rgba[..., 3:4]
        if not (a == 255).all():
            af = a.astype(np.float32) / 255.0
            rgb = rgb * af + 255.0 * (1.0 - af)
    return rgb


def _resample_matrix(start, extent, n_out, n_src):
    """Sparse (n_out, n_src) float32 weights mapping source pixels to output pixels.

    Output pixel i covers the source interval [start + i*s, start + (i+1)*s), s = extent/n_out
    (source pixel j covers [j, j+1)); the weight of j is the overlap length / s. This is
    cv2.INTER_AREA both ways: for shrinking the box average, for enlarging (s < 1) a copy of
    the source pixel, blended only where an output cell straddles two source pixels.
    """
    s = extent / float(n_out)
    i = np.arange(n_out, dtype=np.float64)
    a = start + i * s
    b = a + s
    j0 = np.floor(a).astype(np.int64)
    rows, cols, vals = [], [], []
    for off in range(int(math.ceil(s)) + 2):
        j = j0 + off
        w = np.minimum(b, j + 1) - np.maximum(a, j)
        keep = (w > 1e-9) & (j >= 0) & (j < n_src)
        rows.append(i[keep].astype(np.int64))
        cols.append(j[keep])
        vals.append(w[keep] / s)
    rows, cols, vals = (np.concatenate(v) for v in (rows, cols, vals))
    m = scipy.sparse.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n_out, n_src))
    m.sum_duplicates()
    return m


def _unsupported_reason(path):
    """Why OpenSlide did not recognise a file: empty, a damaged TIFF, or another format."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ("a TIFF that OpenSlide cannot read ({} bytes): truncated or corrupt "
                "(its directories are damaged or missing)".format(size))
    return "not a slide OpenSlide can read (unrecognised format)"


def _file_mpp(props):
    try:
        x = float(props["openslide.mpp-x"])
        y = float(props["openslide.mpp-y"])
    except (KeyError, ValueError, TypeError):
        return None
    if not (x > 0 and y > 0):
        return None
    return (x, y)


def _check_target(path, target_mpp):
    try:
        ok = float(target_mpp) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SlideError(path, "target mpp must be a positive number, got {!r}".format(target_mpp))


def slide_info(path, mpp=None):
    """Geometry of a slide as a dict: path, vendor, width, height (level-0 pixels), mpp_x, mpp_y
    (µm/px, the override if given), mpp_from_file, level_dimensions, level_downsamples."""
    with Slide(path, mpp=mpp) as s:
        return s.info()


def read_slide(path, target_mpp, mpp=None, region=None, max_strip_pixels=DEFAULT_STRIP_PIXELS,
               resample="area"):
    """The slide at ``path`` as RGB uint8 (H, W, 3) at ``target_mpp`` µm/px, white background.

    ``mpp`` (µm per level-0 pixel) overrides the file's value and is needed when the file has
    none. ``region`` = (x, y, w, h) in level-0 pixels reads only that box. Size per axis:
    round(level0_size * mpp / target_mpp). ``resample``: "area" (default) or "cubic" (the
    released code's cv2.INTER_CUBIC; docs/fidelity.md, row ``resample``). Raises ``SlideError``
    naming the file on any failure.
    """
    with Slide(path, mpp=mpp) as s:
        return s.read(target_mpp, region=region, max_strip_pixels=max_strip_pixels,
                      resample=resample)
