"""Argument values that more than one command parses the same way."""
from reproduce.errors import UserError


def parse_size(text, what="--content"):
    """'hxw' -> (h, w) positive ints; UserError naming ``what`` otherwise."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UserError("{} must be HEIGHTxWIDTH in px (e.g. 2000x2400), got {!r}".format(
            what, text))
    if h < 1 or w < 1:
        raise UserError("{} must be positive, got {!r}".format(what, text))
    return h, w
