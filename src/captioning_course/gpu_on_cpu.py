"""Keras's GPU behaviour for recurrent layers, played on a CPU.

On a GPU, Keras runs a `GRU` through cuDNN. XLA cannot compile cuDNN's kernels, so Keras marks
such a layer `supports_jit = False` (keras/src/layers/rnn/gru.py), and whatever decides by
`supports_jit` (Keras's `jit_compile="auto"`, the course's `CaptionDecoder`) compiles without
XLA. On a CPU none of this happens, so code that forces XLA on a GRU passes here and fails on
every GPU. `play_cudnn_gru()` makes every GRU created afterwards behave as on a GPU in both
respects: marked `supports_jit = False`, and its outputs passed through an identity
`tf.numpy_function` (with an identity gradient), an operation that XLA cannot compile either.

The rehearsal profile's kernels start with it (see `STARTUP`); on a machine with a GPU it
leaves Keras alone, since Keras already does the real thing there.

Several GPUs are played the way TensorFlow's own tests play them: `split_cpu(n)` makes the CPU
n logical devices, which `tf.distribute.MirroredStrategy` takes as n replicas, each with its
own copy of the variables and its share of every batch (`split_cpu_startup` for a kernel).
"""

from __future__ import annotations

import functools

# What a kernel runs before the notebook's first cell, as an IPython startup file.
STARTUP = "from captioning_course.gpu_on_cpu import play_cudnn_gru\nplay_cudnn_gru()\n"


def split_cpu_startup(devices: int) -> str:
    """What a kernel runs first so that its CPU is `devices` logical devices."""
    return f"from captioning_course.gpu_on_cpu import split_cpu\nsplit_cpu({devices})\n"


def split_cpu(devices: int) -> list[str]:
    """Make the CPU `devices` logical devices, before TensorFlow first uses it; their names."""
    import tensorflow as tf

    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def opaque_to_xla(tensor):
    """`tensor` unchanged, through an operation XLA cannot compile; gradients pass through."""
    import tensorflow as tf

    @tf.custom_gradient
    def identity(x):
        y = tf.numpy_function(lambda value: value, [x], x.dtype, stateful=False)
        return tf.ensure_shape(y, x.shape), lambda upstream: upstream

    return identity(tensor)


def play_cudnn_gru() -> bool:
    """Make GRU layers created from now on refuse XLA as on a GPU; False if a GPU is here."""
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    gru = keras.layers.GRU
    if getattr(gru, "plays_cudnn", False):
        return True
    original_inner_loop = gru.inner_loop

    @functools.wraps(original_inner_loop)
    def inner_loop(self, *args, **kwargs):
        return tf.nest.map_structure(opaque_to_xla, original_inner_loop(self, *args, **kwargs))

    # A property, not a value: Layer.__init__ sets supports_jit = True on every instance, and
    # Keras sets it again on a GPU; what the layer answers must stay what cuDNN would make it.
    gru.supports_jit = property(lambda layer: False, lambda layer, value: None)
    gru.inner_loop, gru.plays_cudnn = inner_loop, True
    return True
