"""Chooses how a slide's forward pass and gradients are computed (see docs/architecture.md).

    direct     the whole image as one graph (model/direct.py)
    streaming  exact tile-wise computation, memory bounded by a tile (model/streaming.py)
    unified    direct, on a GPU whose allocator oversubscribes into host RAM (model/gpu.py);
               the session config is applied at program start by ``model.gpu.configure``
    auto       streaming without a GPU, unified with one
"""
NAMES = ("direct", "streaming", "unified", "auto")


def resolve(name, gpu_available=None):
    """The concrete strategy that ``name`` means on this machine ('auto' decided here)."""
    if name not in NAMES:
        raise ValueError("strategy must be one of {}, not {!r}".format(", ".join(NAMES), name))
    if name != "auto":
        return name
    if gpu_available is None:
        from model.gpu import gpu_available as probe
        gpu_available = probe()
    return "unified" if gpu_available else "streaming"


def make_strategy(name, model, **options):
    """A strategy object with ``gradients(image, label)`` and ``predict(image, cam=False)``.

    Options: ``tile`` (pixels, a multiple of 32) and ``memory_gb`` for streaming; ignored by the
    others, so one config can name any strategy.
    """
    concrete = resolve(name, options.pop("gpu_available", None))
    if concrete == "streaming":
        import importlib   # lazily: written separately, and only needed when chosen
        streaming = importlib.import_module("model.streaming")
        kwargs = {k: options[k] for k in ("tile", "memory_gb") if options.get(k) is not None}
        return streaming.Streaming(model, **kwargs)
    from model.direct import Direct
    strategy = Direct(model)
    strategy.name = concrete
    return strategy
