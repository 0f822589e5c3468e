"""A TensorFlow computation as a plain function of NumPy arrays, in the mode the process is in.

TensorFlow 1.15 runs a process either eagerly (``tf.compat.v1.enable_v2_behavior()`` at
startup: what ``reproduce``'s commands and ``fit`` do) or in TF1's default graph mode (a Python
session that builds a model first, without that call). A model lives in the mode it was built
in, and the mode cannot change once a graph exists, so the strategies do not pick one:

    run = numpy_function(fn, [tf.TensorSpec([None, None, 3], tf.uint8), ...])
    outputs = run(image, ...)          # NumPy in, the same nested structure of NumPy out

- eager: ``fn`` becomes one ``tf.function`` with that input signature (one trace serves every
  shape that the ``None`` dimensions allow);
- graph: on the first call, placeholders of the signature's dtypes and shapes are fed to ``fn``
  once, in the graph that is the default then (the model's), and ``tf.keras.backend.function``
  runs those outputs on the Keras backend session (which holds the model's variables,
  initialised or restored) at every call.
"""
import tensorflow as tf


def numpy_function(fn, signature):
    """``fn`` (tensors -> nested tensors) as a callable on NumPy inputs returning NumPy.

    ``signature``: one ``tf.TensorSpec`` per positional argument of ``fn``. The mode is the
    process's when this is called; the graph (or the traced function) is built once, on the
    first call.
    """
    if tf.executing_eagerly():
        return _eager(fn, signature)
    return _GraphFunction(fn, signature)


def _eager(fn, signature):
    traced = tf.function(fn, input_signature=list(signature))

    def run(*inputs):
        return tf.nest.map_structure(lambda t: t.numpy(), traced(*inputs))
    run.__doc__ = fn.__doc__
    return run


class _GraphFunction(object):
    """``fn`` built once on placeholders in the default graph, run by a Keras backend function."""

    def __init__(self, fn, signature):
        self._fn, self._signature, self._run = fn, list(signature), None

    def _build(self):
        placeholders = [tf.compat.v1.placeholder(spec.dtype, spec.shape)
                        for spec in self._signature]
        return tf.keras.backend.function(placeholders, self._fn(*placeholders))

    def __call__(self, *inputs):
        if len(inputs) != len(self._signature):
            raise TypeError("expected {} input(s), got {}".format(len(self._signature),
                                                                  len(inputs)))
        if self._run is None:
            self._run = self._build()
        return self._run(list(inputs))
