"""A GRU as Keras makes it on a GPU, played on the CPU: marked supports_jit = False, and
uncompilable by XLA, yet trained and run exactly as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# In a process of its own: the play changes the GRU class for the rest of the process.
PLAY = """
import json
import keras, numpy as np, tensorflow as tf
from captioning_course.gpu_on_cpu import play_cudnn_gru

inputs = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
before = keras.layers.GRU(5, return_sequences=True, return_state=True)
expected = [t.numpy() for t in before(inputs)]
played = [play_cudnn_gru(), play_cudnn_gru()]  # twice: the second changes nothing more
gru = keras.layers.GRU(5, return_sequences=True, return_state=True)
gru.build(inputs.shape)
gru.set_weights(before.get_weights())
gru.supports_jit = True  # what Keras's Layer.__init__ and its CPU path assign
with tf.GradientTape() as tape:
    outputs = gru(inputs)
    loss = tf.reduce_sum(outputs[0] ** 2)
gradients = tape.gradient(loss, gru.trainable_variables)
try:
    tf.function(gru, jit_compile=True)(inputs)
    xla = "compiled"
except tf.errors.InvalidArgumentError as error:
    xla = str(error)
sequence = keras.Input((3, 4))
model = keras.Model(sequence, keras.layers.GRU(5)(sequence))
model.compile(loss="mse", jit_compile=True)  # Keras checks every layer's supports_jit
print(json.dumps({
    "played": played, "supports_jit": gru.supports_jit,
    "same_outputs": all(np.allclose(a, b) for a, b in zip(expected, outputs)),
    "gradients": [float(tf.norm(g)) for g in gradients], "xla": xla,
    "keras_jit": model.jit_compile,
}))
"""


@pytest.fixture(scope="module")
def played() -> dict:
    done = subprocess.run([sys.executable, "-c", PLAY], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_gru_says_xla_cannot_compile_it_as_on_a_gpu(played):
    assert played["played"] == [True, True]
    assert played["supports_jit"] is False


def test_xla_refuses_it_as_it_refuses_cudnn(played):
    assert "unsupported operations" in played["xla"] and "PyFunc" in played["xla"]


def test_it_computes_and_trains_as_before(played):
    assert played["same_outputs"] is True
    assert all(norm > 0 for norm in played["gradients"])  # kernel, recurrent kernel, bias


def test_keras_then_trains_it_without_xla_even_when_asked_for_xla(played):
    assert played["keras_jit"] is False


def test_each_lesson_s_kernel_starts_with_what_its_profile_plays(tmp_path):
    from captioning_course import parameters, profiles

    assert parameters.kernel_environment(profiles.SMOKE, "image_captioning", tmp_path) == {}
    for profile, lesson, startup in [
            (profiles.SMOKE, "image_captioning_at_scale", "split_cpu(2)"),
            (profiles.REHEARSAL, "image_captioning", "play_cudnn_gru()")]:
        env = parameters.kernel_environment(profile, lesson, tmp_path)
        [startup_file] = (Path(env["IPYTHONDIR"]) / "profile_default" / "startup").iterdir()
        assert startup in startup_file.read_text()


def test_a_split_cpu_gives_mirrored_strategy_two_replicas():
    done = subprocess.run([sys.executable, "-c", (
        "from captioning_course.gpu_on_cpu import split_cpu\n"
        "print(split_cpu(2))\n"
        "import tensorflow as tf\n"
        "print(tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']).num_replicas_in_sync)")],
        capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    names, replicas = done.stdout.splitlines()[-2:]
    assert names.count("CPU:") == 2 and replicas == "2"
