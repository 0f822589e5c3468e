"""The reproduction's command line (``python -m reproduce``) and its Python API.

    from reproduce import predict_slide, fit

Both are thin wrappers that import their library module (``model.inference``,
``model.training``) when called, so that importing ``reproduce`` loads no TensorFlow.
"""


def predict_slide(checkpoint_or_model, slide, **options):
    """``model.inference.predict_slide``: one slide's probability, logit and (cam=True) CAM."""
    from model.inference import predict_slide as predict
    return predict(checkpoint_or_model, slide, **options)


def fit(config, **overrides):
    """``model.training.fit``: the paper's training from a YAML path or a dict. Training runs
    eagerly; called from a process already in TF1's graph mode (a model built first), it trains
    in a child ``python -m reproduce train`` and returns the same result."""
    from model.training import fit as train
    return train(config, **overrides)


__all__ = ["predict_slide", "fit"]
