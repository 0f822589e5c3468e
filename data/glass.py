"""Glass to white: an opt-in step of ``prepare`` that is NOT in the paper.

The paper pads each slide with white and feeds the slide as it was scanned (docs/fidelity.md,
row ``glass-to-white``). A real slide's glass is near-white but never exactly 255 (scanner noise,
JPEG, a faint tint), so the streaming planner (model/streaming.py) sees it as content and
computes it in full. ``prepare --glass-to-white T`` (config ``data.glass_to_white: T``) rewrites
the glass of each cached image to pure white (255, 255, 255); ``data.canvas.place`` and
``data.augment.apply_canvas`` leave white border rows and columns out of the content box, so the
planner then skips the glass around the tissue.

What counts as glass, a pure function of the image and the threshold T (1-255):

* a *candidate* is a pixel whose every channel is >= T, i.e. bright (its darkest channel is at
  least T) and nearly grey (its channels differ by at most 255 - T): pale pink or blue tissue has
  one clearly lower channel and stays;
* glass is what a morphological opening of the candidates with a ``OPENING`` x ``OPENING``
  (5 x 5 px) square keeps: every glass pixel lies in a 5 x 5 block of candidates. Isolated pale
  pixels and pale specks or gaps narrower than 5 px inside tissue therefore keep their colour;
  large pale regions inside the tissue (fat, lumina, tears) become white like the glass. Outside
  the image counts as glass (as the white padding that surrounds it on the canvas), so the glass
  along the image's edges is kept whole.

It runs in strips of rows (a halo of 2 px on each side of a strip keeps it exact), so its
memory is a strip's, on top of the image it rewrites.
"""
import numpy as np

from data.errors import InputError

WHITE = 255
OPENING = 5                   # px, side of the square structuring element of the opening
_HALO = 2 * (OPENING // 2)    # rows an erosion then a dilation reach past a strip
_STRIP_PIXELS = 1 << 22       # ~4 M px per strip


class GlassError(InputError):
    """A glass threshold that is not an integer from 1 to 255 (or off)."""


def check_threshold(value, name="--glass-to-white"):
    """The glass threshold as an int from 1 to 255, or None for off (``None``, ``"off"``,
    ``"none"``, ``"null"``). Anything else raises GlassError naming ``name``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in
                         ("off", "none", "null")):
        return None
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if isinstance(number, (bool, float)) or not isinstance(number, (int, np.integer)) \
            or not 1 <= number <= 255:
        raise GlassError("{}: must be an integer from 1 to 255 (a pixel whose every channel is "
                         ">= it is glass) or off, got {!r}".format(name, value))
    return int(number)


def _glass_rows(image, threshold, r0, r1):
    """bool (r1 - r0, W): the glass of rows [r0, r1) of ``image``, from those rows and a halo of
    ``_HALO`` rows on either side (enough for an erosion then a dilation)."""
    import cv2
    height = image.shape[0]
    a, b = max(0, r0 - _HALO), min(height, r1 + _HALO)
    candidates = (image[a:b].min(axis=2) >= threshold).view(np.uint8)
    # Outside the image counts as glass: a border of candidates around it (above and below
    # only at the image's own edges; elsewhere the halo holds the true rows)
    pad = OPENING // 2
    top, bottom = (pad if a == 0 else 0), (pad if b == height else 0)
    candidates = cv2.copyMakeBorder(candidates, top, bottom, pad, pad, cv2.BORDER_CONSTANT,
                                    value=1)
    kernel = np.ones((OPENING, OPENING), np.uint8)
    opened = cv2.dilate(cv2.erode(candidates, kernel), kernel)
    return opened[top + r0 - a:top + r1 - a, pad:pad + image.shape[1]] > 0


def _strip_rows(width, strip_rows):
    return strip_rows or max(1, _STRIP_PIXELS // max(1, width))


def glass_mask(image, threshold, strip_rows=None):
    """bool (H, W): the glass of a uint8 RGB ``image`` at ``threshold`` (module docstring)."""
    threshold = check_threshold(threshold, "threshold")
    if threshold is None:
        raise GlassError("threshold: glass_mask needs a threshold, got off")
    height, width = image.shape[:2]
    rows = _strip_rows(width, strip_rows)
    mask = np.zeros((height, width), bool)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        mask[r0:r1] = _glass_rows(image, threshold, r0, r1)
    return mask


def glass_to_white(image, threshold, copy=True, strip_rows=None):
    """``image`` (uint8 RGB) with its glass at ``threshold`` set to pure white; a new array, or
    ``image`` itself rewritten when ``copy=False``. ``threshold`` None (off) changes nothing."""
    threshold = check_threshold(threshold, "threshold")
    out = image.copy() if copy else image
    if threshold is None:
        return out
    height, width = image.shape[:2]
    rows = _strip_rows(width, strip_rows)
    for r0 in range(0, height, rows):
        # the rows above were rewritten already, but whitening turns glass into glass (255 is
        # a candidate at any threshold), so the halo reads the same as the input
        r1 = min(height, r0 + rows)
        out[r0:r1][_glass_rows(out, threshold, r0, r1)] = WHITE
    return out
