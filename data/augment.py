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
import warnings

import cv2
import numpy as np

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

WHITE = 255
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


def canvas_offset(size, canvas):
    """Where row/column 0 of an image of `size` pixels lands on the canvas (centre pad or crop).

    Pad: ``(canvas - size) // 2`` white pixels before, the rest after. Crop: the central
    `canvas` pixels are kept, starting at ``(size - canvas) // 2``.
    """
    if size <= canvas:
        return (canvas - size) // 2
    return -((size - canvas) // 2)


def _check_image(image):
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError("augment: expected a uint8 (H, W, 3) RGB array, got {} {}".format(
            getattr(image, "dtype", type(image)), getattr(image, "shape", "")))


def _warn_crop(image, canvas, fail_if_larger):
    h, w = image.shape[:2]
    if h > canvas or w > canvas:
        message = "image {}x{} is larger than the canvas {}x{}: centre-cropped".format(
            h, w, canvas, canvas)
        if fail_if_larger:
            raise ValueError(message)
        warnings.warn(message)


def pad_to_canvas(image, canvas, fail_if_larger=False):
    """Centre-pads with white to (canvas, canvas, 3); centre-crops with a warning if larger."""
    _check_image(image)
    _warn_crop(image, canvas, fail_if_larger)
    h, w = image.shape[:2]
    out = np.full((canvas, canvas, 3), WHITE, np.uint8)
    oy, ox = canvas_offset(h, canvas), canvas_offset(w, canvas)
    sy, sx = max(0, -oy), max(0, -ox)
    dy, dx = max(0, oy), max(0, ox)
    ch, cw = min(h - sy, canvas - dy), min(w - sx, canvas - dx)
    out[dy:dy + ch, dx:dx + cw] = image[sy:sy + ch, sx:sx + cw]
    return out


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


def colour_(canvas_image, params, stages=COLOUR_STAGES):
    """Contrast, brightness, hue and saturation of the paper, in place, strip by strip.

    Like imgaug, the colour-space round trips happen even when a factor is 1 or an offset 0
    (they are not lossless in uint8). `stages` selects stages, for tests only.
    """
    contrast, brightness, hue, saturation = _colour_tables(params)
    to_space, from_space, channel = BRIGHTNESS_SPACES[params.brightness_space]
    h, w = canvas_image.shape[:2]
    rows = max(1, _STRIP_PIXELS // max(1, w))
    for r0 in range(0, h, rows):
        strip = canvas_image[r0:r0 + rows]
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
    return canvas_image


def apply(image, params, canvas, fail_if_larger=False, stages=COLOUR_STAGES):
    """The augmentation with given parameters: uint8 (H, W, 3) -> uint8 (canvas, canvas, 3)."""
    _check_image(image)
    _warn_crop(image, canvas, fail_if_larger)
    # A larger image is centre-cropped first (a view, no copy), as padding then augmenting
    # would: the rotation must not bring in tissue from outside the canvas.
    h, w = image.shape[:2]
    y0, x0 = max(0, -canvas_offset(h, canvas)), max(0, -canvas_offset(w, canvas))
    image = image[y0:y0 + canvas, x0:x0 + canvas]
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
