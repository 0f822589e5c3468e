"""The paper's augmentation, equal to its imgaug 0.4 pipeline but bounded in memory.

The paper (Methods, "data preparation") pads each slide with white to the canvas and then applies
random flipping, rotation 0-360 deg, translation +-500 px, contrast x0.5-1.5, brightness
x0.65-1.35, hue +-32 and saturation +-32. The released code of the method
(aetherAI/whole-slide-cnn, ``dataloader._get_augmentor``) does it with imgaug 0.4 as::

    Fliplr(0.5), Flipud(0.5),
    Affine(rotate=(0, 360), translate=..., order=3 (bicubic), cval=255, mode="constant"),
    LinearContrast((0.5, 1.5)), MultiplyBrightness((0.65, 1.35)),
    AddToHueAndSaturation((-32, 32), per_channel=True)   # hue and saturation drawn apart

This module computes the same result for the same parameters (tested against imgaug 0.4 in
tests/test_augment.py), in a way that works on a 21,500^2 canvas:

* geometry: centre-pad (or centre-crop) to the canvas, both flips, the rotation about the canvas
  centre and the translation are one affine map ``M = A . F . P``, applied by a single
  ``cv2.warpAffine`` (bicubic, white border) that writes the canvas directly. ``A`` is imgaug's
  matrix (``_AffineSamplingResult.to_matrix`` with its half-pixel shift), ``F`` the flips on the
  canvas (x -> C-1-x), ``P`` the padding offset. No padded copy or flipped copy is ever made.
* colour: per-pixel operations, so they run in horizontal strips of the canvas, in place:
  - contrast (imgaug ``adjust_contrast_linear``): LUT ``v -> clip(127 + a (v - 127))``, truncated
    to uint8 (imgaug's centre for uint8 is ``int(127.5) = 127``);
  - brightness (imgaug ``MultiplyBrightness``): convert to one colour space drawn from
    YCrCb/HSV/HLS/Lab/Luv/YUV, multiply its brightness channel by LUT ``v -> clip(v m)``
    (truncated), convert back;
  - hue and saturation (imgaug ``AddToHueAndSaturation``, cv2 backend): RGB -> HSV (OpenCV uint8:
    H in 0..179, i.e. 2 deg per unit), ``H -> (H + dh) mod 180`` with the hue value projected
    as imgaug does, ``dh = int(hue / 255 * 180)`` (so +-32 -> +-22 units, +-44 deg),
    ``S -> clip(S + ds, 0, 255)``, HSV -> RGB.

Peak memory is the input plus the canvas plus a few strips; see docs/benchmarks.md.
"""
import collections
import os
import time

import cv2
import numpy as np

from data.canvas import (WHITE, Canvas, canvas_offset, check_image, crop_to_canvas, place,
                         warn_crop)

# name -> (RGB->space, space->RGB, index of the brightness channel); imgaug's
# WithBrightnessChannels._CSPACE_TO_CHANNEL_ID and _CSPACE_OPENCV_CONV_VARS.
BRIGHTNESS_SPACES = collections.OrderedDict([
    ("YCrCb", (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB, 0)),
    ("HSV", (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2)),
    ("HLS", (cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB, 1)),
    ("Lab", (cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB, 0)),
    ("Luv", (cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB, 0)),
    ("YUV", (cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB, 0)),
])

_STRIP_PIXELS = 1 << 22  # ~4 M pixels per colour strip: 12 MB of uint8 RGB, whatever the width

AugmentParams = collections.namedtuple("AugmentParams", [
    "flip_lr",          # bool: mirror left-right (on the canvas)
    "flip_ud",          # bool: mirror up-down (on the canvas)
    "rotate_deg",       # float: counter-clockwise on screen as imgaug draws it, about the centre
    "translate_x_px",   # int: pixels at the canvas resolution, + moves the image right
    "translate_y_px",   # int: + moves the image down
    "contrast",         # float: LinearContrast alpha
    "brightness",       # float: multiplier of the brightness channel
    "brightness_space",  # str: key of BRIGHTNESS_SPACES
    "hue",              # int: imgaug hue value in [-255, 255], projected by hue_opencv_units
    "saturation",       # int: added to OpenCV saturation (0..255)
])


def identity_params():
    """Parameters that change nothing (pad/crop only)."""
    return AugmentParams(False, False, 0.0, 0, 0, 1.0, 1.0, "HSV", 0, 0)


def _rng(rng_or_seed):
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def sample_params(rng_or_seed, translate_px=500, rotate_deg=(0.0, 360.0), contrast=(0.5, 1.5),
                  brightness=(0.65, 1.35), hue=32, saturation=32,
                  brightness_spaces=tuple(BRIGHTNESS_SPACES)):
    """Draws one set of the paper's parameters (defaults = the paper's ranges).

    translate_px: the +- range in pixels at the canvas resolution (paper: 500 at 21,500^2; scale
    it with the canvas, e.g. ``round(500 * canvas / 21500)``). Integers drawn uniformly, as
    imgaug's ``translate_px=(-t, t)``. Hue and saturation are integers drawn independently in
    [-hue, hue] and [-saturation, saturation] (imgaug ``per_channel=True``).
    """
    rng = _rng(rng_or_seed)
    t = int(translate_px)
    return AugmentParams(
        flip_lr=bool(rng.random() < 0.5),
        flip_ud=bool(rng.random() < 0.5),
        rotate_deg=float(rng.uniform(*rotate_deg)),
        translate_x_px=int(rng.integers(-t, t + 1)),
        translate_y_px=int(rng.integers(-t, t + 1)),
        contrast=float(rng.uniform(*contrast)),
        brightness=float(rng.uniform(*brightness)),
        brightness_space=str(brightness_spaces[int(rng.integers(len(brightness_spaces)))]),
        hue=int(rng.integers(-hue, hue + 1)),
        saturation=int(rng.integers(-saturation, saturation + 1)),
    )


def pad_to_canvas(image, canvas, fail_if_larger=False):
    """Centre-pads with white to (canvas, canvas, 3); centre-crops with a warning if larger.
    The dense form of ``data.canvas.place``."""
    return place(image, canvas, fail_if_larger).dense()


def _imgaug_matrix(canvas, params):
    """imgaug 0.4's Affine matrix for a (canvas, canvas) image: scale 1, shear 0.

    Composition as imgaug (skimage ``a + b`` means b after a): to top-left, the shear-y
    rotations (with imgaug's 3.141592, not pi), then rotation+translation, back to centre;
    the image shift_add of (0.5, 0.5) is imgaug's.
    """
    def rotation(rad):
        c, s = np.cos(rad), np.sin(rad)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def translation(x, y):
        return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])

    shift = canvas / 2.0 - 0.5
    transforms = rotation(np.deg2rad(params.rotate_deg))
    transforms[0, 2], transforms[1, 2] = params.translate_x_px, params.translate_y_px
    steps = [translation(-shift, -shift), rotation(-3.141592 / 2), np.eye(3),
             rotation(3.141592 / 2), transforms, translation(shift, shift)]
    matrix = np.eye(3)
    for step in steps:
        matrix = step @ matrix
    return matrix


def geometry_matrix(shape, canvas, params):
    """The 3x3 map from input pixel (x, y) to canvas pixel: imgaug affine . flips . padding."""
    h, w = shape[:2]
    pad = np.array([[1.0, 0.0, canvas_offset(w, canvas)],
                    [0.0, 1.0, canvas_offset(h, canvas)], [0.0, 0.0, 1.0]])
    flip = np.diag([-1.0 if params.flip_lr else 1.0, -1.0 if params.flip_ud else 1.0, 1.0])
    flip[0, 2] = canvas - 1.0 if params.flip_lr else 0.0
    flip[1, 2] = canvas - 1.0 if params.flip_ud else 0.0
    return _imgaug_matrix(canvas, params) @ flip @ pad


def hue_opencv_units(hue):
    """imgaug's projection of a hue value in [-255, 255] to OpenCV units (0..179 = 0..358 deg):
    ``int(float32(hue) / 255 * 180)``, truncated toward zero; so +-32 -> +-22 units (+-44 deg)."""
    projected = (np.array([hue], np.float32) / 255.0) * (360 / 2)
    return int(projected.astype(np.int32)[0])


def _colour_tables(params):
    values = np.arange(0, 256, dtype=np.float32)
    contrast = 127 + np.float32(params.contrast) * (values - 127)
    contrast = np.clip(contrast, 0, 255).astype(np.uint8)
    brightness = np.clip(values * np.float32(params.brightness), 0, 255).astype(np.uint8)
    ints = np.arange(0, 256, dtype=np.int16)
    hue = np.mod(ints + hue_opencv_units(params.hue), 180).astype(np.uint8)
    saturation = np.clip(ints + int(params.saturation), 0, 255).astype(np.uint8)
    return contrast, brightness, hue, saturation


COLOUR_STAGES = ("contrast", "brightness", "hue_saturation")


def _colour_opencv_(strip, params, stages):
    """The colour steps as imgaug runs them, with OpenCV, in place on one uint8 RGB array."""
    contrast, brightness, hue, saturation = _colour_tables(params)
    to_space, from_space, channel = BRIGHTNESS_SPACES[params.brightness_space]
    if "contrast" in stages:
        cv2.LUT(strip, contrast, dst=strip)
    if "brightness" in stages:
        space = cv2.cvtColor(strip, to_space)
        space[..., channel] = brightness[space[..., channel]]
        strip[...] = cv2.cvtColor(space, from_space)
    if "hue_saturation" in stages:
        hsv = cv2.cvtColor(strip, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = hue[hsv[..., 0]]
        hsv[..., 1] = saturation[hsv[..., 1]]
        strip[...] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


_SIMD_ROW = 4096   # px: a multiple of every SIMD width of OpenCV's colour loops


def colour_(image, params, stages=COLOUR_STAGES):
    """Contrast, brightness, hue and saturation of the paper, in place, strip by strip.

    Like imgaug, the colour-space round trips happen even when a factor is 1 or an offset 0
    (they are not lossless in uint8). `stages` selects stages, for tests only.

    OpenCV's uint8 colour conversions are not pure functions of the pixel: its SIMD loop and
    the scalar loop that finishes a row round differently (HSV -> RGB by up to a few levels),
    so the same colour would come out differently at the end of a row. The pixels are
    therefore laid out in rows of ``_SIMD_ROW`` px, and each goes through the SIMD loop: the
    result depends on its colour alone (tested), which keeps the white fill one uniform colour
    (data/canvas.py). It equals imgaug everywhere but at imgaug's row ends.
    """
    if not image.flags.c_contiguous:
        image[...] = colour_(np.ascontiguousarray(image), params, stages)
        return image
    flat = image.reshape(-1, 3)
    n = flat.shape[0]
    for start in range(0, n, _STRIP_PIXELS):
        part = flat[start:start + _STRIP_PIXELS]
        rows = -(-part.shape[0] // _SIMD_ROW)
        strip = np.full((rows * _SIMD_ROW, 3), WHITE, np.uint8)
        strip[:part.shape[0]] = part
        _colour_opencv_(strip.reshape(rows, _SIMD_ROW, 3), params, stages)
        part[...] = strip[:part.shape[0]]
    return image


def fill_colour(params, stages=COLOUR_STAGES):
    """The colour that the white fill becomes: uint8 (3,)."""
    return colour_(np.full((1, 1, 3), WHITE, np.uint8), params, stages)[0, 0]


def _opencv_inverse(matrix):
    """The inverse affine map exactly as cv::warpAffine computes it (imgwarp.cpp), in float64."""
    m = [float(v) for v in np.asarray(matrix, np.float64)[:2].reshape(-1)]
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[4] * det, m[0] * det
    m[0], m[1], m[3], m[4] = a11, m[1] * -det, m[3] * -det, a22
    b1 = -m[0] * m[2] - m[1] * m[5]
    b2 = -m[3] * m[2] - m[4] * m[5]
    m[2], m[5] = b1, b2
    return m


def _warp_maps(inverse, top, bottom, left, right):
    """cv::warpAffine's fixed-point source coordinates of canvas pixels [top, bottom) x
    [left, right): (xy int16 (h, w, 2), alpha uint16 (h, w)) for ``cv2.remap``.

    warpAffine (INTER_CUBIC) maps output pixel (x, y) to ``X = (round(M0 x 1024) +
    round((M1 y + M2) 1024) + 16) >> 5`` (and Y alike, 1/32 px), then remaps with the integer
    part and the 5+5-bit fraction. Doing the same for a window of the canvas gives its pixels
    bit for bit (tests/test_canvas.py), where a warpAffine of the window alone would round
    differently.
    """
    xs = np.arange(left, right, dtype=np.float64)
    ys = np.arange(top, bottom, dtype=np.float64)
    m = inverse
    x_col = np.rint(m[0] * xs * 1024).astype(np.int64)
    y_col = np.rint(m[3] * xs * 1024).astype(np.int64)
    x_row = np.rint((m[1] * ys + m[2]) * 1024).astype(np.int64) + 16
    y_row = np.rint((m[4] * ys + m[5]) * 1024).astype(np.int64) + 16
    x = (x_row[:, None] + x_col[None, :]) >> 5
    y = (y_row[:, None] + y_col[None, :]) >> 5
    xy = np.empty(x.shape + (2,), np.int16)
    xy[..., 0] = np.clip(x >> 5, -32768, 32767)
    xy[..., 1] = np.clip(y >> 5, -32768, 32767)
    alpha = ((y & 31) * 32 + (x & 31)).astype(np.uint16)
    return xy, alpha


def footprint(shape, canvas, params):
    """(top, bottom, left, right): canvas px that the warped image can change (half-open).

    A canvas pixel takes the fill unless its bicubic taps (source pixels floor(s) - 1 ..
    floor(s) + 2) reach the image, i.e. unless its source point s lies in (-3, size + 1); the
    image rectangle grown by 3 px is mapped forward and its bounding box grown by 2 px more.
    """
    h, w = shape[:2]
    matrix = geometry_matrix(shape, canvas, params)
    corners = np.array([[-3.0, -3.0, 1.0], [w + 2.0, -3.0, 1.0], [-3.0, h + 2.0, 1.0],
                        [w + 2.0, h + 2.0, 1.0]])
    xy = corners @ matrix[:2].T
    top = max(0, int(np.floor(xy[:, 1].min())) - 2)
    bottom = min(canvas, int(np.ceil(xy[:, 1].max())) + 3)
    left = max(0, int(np.floor(xy[:, 0].min())) - 2)
    right = min(canvas, int(np.ceil(xy[:, 0].max())) + 3)
    return top, max(top, bottom), left, max(left, right)


def _trim_white(content):
    """(top, bottom, left, right) of the smallest box holding every non-white pixel."""
    other = np.any(content != WHITE, axis=2)
    rows, cols = np.flatnonzero(other.any(axis=1)), np.flatnonzero(other.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def apply_canvas(image, params, canvas, fail_if_larger=False, stages=COLOUR_STAGES):
    """The augmentation as a ``data.canvas.Canvas``: equal, pixel for pixel, to
    ``apply(image, params, canvas)`` (tested), in time and memory of the slide's footprint.

    Only the warped footprint is computed, with warpAffine's own fixed-point coordinates
    (``_warp_maps``) in strips of rows; its white rows and columns at the edges are trimmed; the
    colour steps run on what is left, and the fill is white after the same colour steps.
    """
    check_image(image)
    warn_crop(image, canvas, fail_if_larger)
    image = crop_to_canvas(image, canvas)
    top, bottom, left, right = footprint(image.shape, canvas, params)
    inverse = _opencv_inverse(geometry_matrix(image.shape, canvas, params))
    content = np.empty((bottom - top, right - left, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, right - left))
    for r0 in range(top, bottom, rows):
        r1 = min(bottom, r0 + rows)
        xy, alpha = _warp_maps(inverse, r0, r1, left, right)
        content[r0 - top:r1 - top] = cv2.remap(image, xy, alpha, cv2.INTER_CUBIC,
                                               borderMode=cv2.BORDER_CONSTANT,
                                               borderValue=(WHITE, WHITE, WHITE))
    a, b, c, d = _trim_white(content)
    content = np.ascontiguousarray(content[a:b, c:d])
    return Canvas(colour_(content, params, stages), (top + a, left + c),
                  fill_colour(params, stages), (canvas, canvas))


def apply(image, params, canvas, fail_if_larger=False, stages=COLOUR_STAGES):
    """The augmentation with given parameters: uint8 (H, W, 3) -> uint8 (canvas, canvas, 3).

    The dense reference: one warpAffine of the whole canvas, as imgaug does it. Training uses
    ``apply_canvas``, its equal that never builds the canvas.
    """
    check_image(image)
    warn_crop(image, canvas, fail_if_larger)
    # A larger image is centre-cropped first (a view, no copy), as padding then augmenting
    # would: the rotation must not bring in tissue from outside the canvas.
    image = crop_to_canvas(image, canvas)
    matrix = geometry_matrix(image.shape, canvas, params)
    out = cv2.warpAffine(image, matrix[:2], (canvas, canvas),
                         flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(WHITE, WHITE, WHITE))
    return colour_(out, params, stages)


def augment(image, rng_or_seed, canvas, translate_px=500, fail_if_larger=False, **ranges):
    """Pads `image` to the canvas and applies the paper's random augmentation.

    rng_or_seed: an int/SeedSequence/None (fresh generator) or a ``np.random.Generator``; the
    same seed gives the same output. translate_px: +- range in canvas pixels (paper 500 at
    21,500). Other ``ranges`` go to :func:`sample_params`. Returns uint8 (canvas, canvas, 3).
    """
    return apply(image, sample_params(rng_or_seed, translate_px=translate_px, **ranges),
                 canvas, fail_if_larger=fail_if_larger)


def augment_canvas(image, rng_or_seed, canvas, translate_px=500, fail_if_larger=False,
                   **ranges):
    """``augment`` in the ``Canvas`` form (``apply_canvas``): same draws, same pixels."""
    return apply_canvas(image, sample_params(rng_or_seed, translate_px=translate_px, **ranges),
                        canvas, fail_if_larger=fail_if_larger)


def _peak_rss_gb():
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2.0 ** 20


def benchmark(size, canvas=None, seed=0, repeats=1):
    """Times `augment` on a synthetic size x size uint8 RGB image.

    Run it in a fresh process (``python -c "from data.augment import benchmark; ..."``): the
    peak RSS it reports is that of the whole process. Returns a dict with size, canvas,
    seconds (mean of `repeats`), peak_rss_gb, input_gb, and cv2 threads.
    """
    canvas = size if canvas is None else canvas
    rng = np.random.default_rng(seed)
    # Tissue-like content without a size^2 float temporary: a small random image, resized.
    small = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    rss_before = _peak_rss_gb()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        out = augment(image, seed + i, canvas, translate_px=round(500 * canvas / 21500))
        times.append(time.perf_counter() - start)
        del out
    return dict(size=int(size), canvas=int(canvas), seconds=float(np.mean(times)),
                peak_rss_gb=round(_peak_rss_gb(), 3), peak_rss_before_gb=round(rss_before, 3),
                input_gb=round(image.nbytes / 2.0 ** 30, 3), cv2_threads=cv2.getNumThreads(),
                pid=os.getpid())
