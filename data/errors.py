"""The one base class of the errors a user can fix: a file, a field or a value is wrong.

Like ``openslide.OpenSlideError``, every user-facing error of the library derives from it
(``data.SlideError``, ``data.cache.CacheError``, ``model.checkpoint.CheckpointError``, ...), and
its message names the file or the field. The command line (``python -m reproduce``) catches this
class alone and prints its message as one line with exit status 2; anything else is a bug and
keeps its traceback.
"""


class InputError(Exception):
    """Bad input: the message names the file, the field or the value, and says what to do."""


class AnnotationError(InputError):
    """An annotation file (GeoJSON or ASAP XML) that holds no usable polygon. Message names the
    file. Here rather than in data/nodes.py, so that both readers (nodes.py, asap.py) use it."""
