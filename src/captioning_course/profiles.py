"""Profiles: one notebook, three scales.

A lesson's `parameters` cell holds the real course (`full`): COCO through TFDS, ImageNet
weights, the seed's sizes. A profile is the set of overrides papermill injects on top of
those defaults. Notebooks never branch on the profile's name; only these values change.

- `smoke`: the offline data slice, random encoder weights, sizes a 2-core CPU trains in
  minutes; it shows that the model learns.
- `rehearsal`: the full profile's sizes and code paths (image size, vocabulary cap, caption
  length, model width, batch, the encoders, the datasets' own loaders, encoder weights loaded
  from a file) on a few dozen slice images and one short epoch, in a kernel where Keras's
  recurrent layers refuse XLA as they do on a GPU (`gpu_on_cpu`); it shows that the code a
  student runs on a GPU executes, not that it learns.
- `full`: the defaults, for a GPU machine with COCO and ImageNet weights.

The rule behind them: a profile swaps bytes, never branches. It may say where data and weights
come from (a `Source`: a copy of the slice in a real dataset's layout, archives served from a
`file://` URL, a weights file) and how many images and steps, but for every parameter a lesson
selects code with (`code_selecting_parameters`), the full course's value must also be the value
of a profile the tests run (`untested_defaults` names any that is not).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from captioning_course.data_copies import COCO_CAPTIONS_COPY, FLICKR8K_ARCHIVES
from captioning_course.data_slice import NAME as SLICE_NAME
from captioning_course.data_slice import SliceParams
from captioning_course.weights import RandomWeights


@runtime_checkable
class Source(Protocol):
    """A profile value that stands for bytes the runner makes before a run."""

    def value(self, data_dir: Path, output_dir: Path) -> str:
        """What the parameter is set to: a path or URL under `data_dir` or `output_dir`."""

    def prepare(self, data_dir: Path, data_slice: SliceParams) -> None:
        """Make the bytes under `data_dir` unless they are there already."""


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """A folder of the lesson's own run, empty when it starts: a download lands there anew."""

    name: str

    def value(self, data_dir: Path, output_dir: Path) -> str:
        return str((output_dir / self.name).resolve())

    def prepare(self, data_dir: Path, data_slice: SliceParams) -> None:
        """Nothing: the runner empties the lesson's output folder before each run."""


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    timeout_s: int  # wall-clock limit for one notebook
    data_slice: SliceParams | None  # when set, the runner prepares it and injects DATA_DIR
    overrides: dict[str, dict[str, Any]]  # notebook stem -> parameters; "*" applies to all
    needs_gpu: bool = False  # the runner warns before such a run on a machine without one
    plays_gpu: bool = False  # kernels start with gpu_on_cpu.play_cudnn_gru()
    # notebook stem -> logical CPU devices its kernels start with, standing in for GPUs
    logical_cpus: dict[str, int] = dataclasses.field(default_factory=dict)

    def overrides_for(self, notebook_stem: str) -> dict[str, Any]:
        return {**self.overrides.get("*", {}), **self.overrides.get(notebook_stem, {})}


SMOKE = Profile(
    name="smoke",
    description="offline data slice, untrained encoder weights, sizes for a 2-core CPU",
    timeout_s=30 * 60,
    data_slice=SliceParams(),
    overrides={
        "getting_started": {"DATASET": SLICE_NAME},
        "image_captioning": {
            "DATASET": SLICE_NAME,
            "EVAL_IMAGES": 100,
            "ENCODER_WEIGHTS": None,
            "IMG_SIZE": 150,  # a 3x3 feature grid, matching the slice's 3x3 layout
            "VOCAB_SIZE": 200,
            "MAX_CAPTION_LEN": 24,
            "ATTENTION_DIM": 256,
            "EPOCHS": 60,
        },
        "image_captioning_custom_loop": {
            "DATASET": SLICE_NAME,
            "EVAL_IMAGES": 100,
            "ENCODER_WEIGHTS": None,
            "IMG_SIZE": 150,  # a 3x3 feature grid with InceptionV3, matching the slice's layout
            "VOCAB_SIZE": 200,
            "MAX_CAPTION_LEN": 24,
            "EMBEDDING_DIM": 128,
            "UNITS": 256,
            "EPOCHS": 20,
        },
        "image_captioning_transformer": {
            "DATA_DIR": RunFolder("datasets"),
            "FLICKR8K_URL": FLICKR8K_ARCHIVES,
            "EVAL_IMAGES": 100,
            # Without ImageNet weights MobileNetV3Small's features all but vanish: the signal
            # shrinks through its untrained layers to a std of about 4e-10 on the slice, below
            # float16's smallest positive number (~6e-8), so the cache holds exact zeros and the
            # decoder cannot see the photo. Untrained InceptionResNetV2 keeps a std of ~1e-2,
            # enough to learn from. The rehearsal keeps the full course's MobileNetV3Small.
            # tests/test_image_captioning_transformer.py reads both runs' caches to show it.
            "ENCODER": "InceptionResNetV2",
            "ENCODER_WEIGHTS": None,
            "IMG_SIZE": 150,  # a 3x3 feature grid, matching the slice's 3x3 layout
            "VOCAB_SIZE": 200,
            "UNITS": 128,
            "DROPOUT": 0.1,
            "LEARNING_RATE": 1e-3,
        },
        "image_captioning_at_scale": {
            "DATASET": SLICE_NAME,
            "EVAL_IMAGES": 100,
            "ENCODER_WEIGHTS": None,
            "IMG_SIZE": 150,  # the main lesson's smoke sizes: its feature cache is reused
            "VOCAB_SIZE": 200,
            "MAX_CAPTION_LEN": 24,
            "ATTENTION_DIM": 256,
            "BATCH_SIZE": 16,  # per replica: 32 a step, as the main lesson's
            "EPOCHS": 30,
            # Two logical CPUs (logical_cpus) as two GPUs; the rehearsal keeps DEVICES = None.
            # XLA stays "auto": Keras compiles nothing with XLA on a CPU-only machine, and XLA
            # cannot run a step whose variables sit on two logical CPUs anyway.
            "DEVICES": ["/cpu:0", "/cpu:1"],
        },
    },
    logical_cpus={"image_captioning_at_scale": 2},
)

REHEARSAL = Profile(
    name="rehearsal",
    description="full sizes and code paths on a few dozen slice images, GPU layers played",
    timeout_s=20 * 60,
    data_slice=SliceParams(),
    overrides={
        # COCO through TFDS's own coco_captions builder, from a prepared copy of the slice.
        "getting_started": {"DATA_DIR": COCO_CAPTIONS_COPY},
        "image_captioning": {
            "DATA_DIR": COCO_CAPTIONS_COPY,
            "TRAIN_SPLIT": "train[:64]",
            "EVAL_IMAGES": 32,
            "ENCODER_WEIGHTS": RandomWeights("InceptionResNetV2"),
        },
        "image_captioning_custom_loop": {
            "DATA_DIR": COCO_CAPTIONS_COPY,
            "TRAIN_SPLIT": "train[:64]",  # 320 image/caption pairs
            "EVAL_IMAGES": 32,
            "ENCODER_WEIGHTS": RandomWeights("InceptionV3"),
        },
        # Flickr8k through the lesson's own download and unpack code, from archives of the slice.
        "image_captioning_transformer": {
            "DATA_DIR": RunFolder("datasets"),
            "FLICKR8K_URL": FLICKR8K_ARCHIVES,
            "TRAIN_IMAGES": 64,  # 320 image/caption pairs
            "EVAL_IMAGES": 32,
            "ENCODER_WEIGHTS": RandomWeights("MobileNetV3Small"),
        },
        "image_captioning_at_scale": {
            "DATA_DIR": COCO_CAPTIONS_COPY,
            "TRAIN_SPLIT": "train[:64]",
            "EVAL_IMAGES": 32,
            "ENCODER_WEIGHTS": RandomWeights("InceptionResNetV2"),
        },
    },
    plays_gpu=True,
)

FULL = Profile(
    name="full",
    description="the notebooks' own defaults: COCO captions, ImageNet weights (needs a GPU)",
    timeout_s=12 * 60 * 60,
    data_slice=None,
    overrides={},
    needs_gpu=True,
)

PROFILES = {profile.name: profile for profile in (SMOKE, REHEARSAL, FULL)}


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None


# The profiles `make test` executes: between them they must take every code path the full
# course takes.
TESTED = (SMOKE, REHEARSAL)
# Calls that look code up by a name (a TFDS builder, an attribute), and where the name goes.
_NAME_ARGUMENT = {"load": 0, "builder": 0, "getattr": 1}


def code_selecting_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters `notebook` selects code with, and their full (default) values.

    A parameter selects code when the lesson branches on it (an `if`, `while` or conditional
    expression tests it, or it is compared with a constant), looks code up by it (the key of
    a subscript of a dict the lesson writes, the name given to `tfds.load`, `tfds.builder` or
    `getattr`), or is a switch (its default is True or False).
    """
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    [parameters_cell] = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    defaults = {target.id: ast.literal_eval(statement.value)
                for statement in ast.parse(parameters_cell.source).body
                if isinstance(statement, ast.Assign)
                for target in statement.targets if isinstance(target, ast.Name)}
    code = "\n".join(_python_lines(c.source) for c in cells
                     if c.cell_type == "code" and c is not parameters_cell)
    selecting = {name for name, value in defaults.items() if isinstance(value, bool)}
    selecting |= _names_selecting_code(ast.parse(code)) & set(defaults)
    return {name: defaults[name] for name in sorted(selecting)}


def _python_lines(source: str) -> str:
    """A cell's source without IPython's magics and shell escapes, which are not Python."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def _names_selecting_code(tree: ast.AST) -> set[str]:
    dicts = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
             and isinstance(node.value, ast.Dict)
             for target in node.targets if isinstance(target, ast.Name)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.While | ast.IfExp):
            found |= _tested_names(node.test)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(operand, ast.Constant) for operand in operands):
                found |= {o.id for o in operands if isinstance(o, ast.Name)}
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in dicts and isinstance(node.slice, ast.Name):
            found.add(node.slice.id)
        elif isinstance(node, ast.Call) and _called_name(node.func) in _NAME_ARGUMENT:
            position = _NAME_ARGUMENT[_called_name(node.func)]
            arguments = [*node.args[position:position + 1],
                         *(k.value for k in node.keywords if k.arg == "name")]
            found |= {a.id for a in arguments if isinstance(a, ast.Name)}
    return found


def _tested_names(test: ast.expr) -> set[str]:
    """Names whose truth value `test` is, alone, negated or combined with and/or."""
    if isinstance(test, ast.Name):
        return {test.id}
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _tested_names(test.operand)
    if isinstance(test, ast.BoolOp):
        return set().union(*map(_tested_names, test.values))
    return set()


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def untested_defaults(notebook: Path, tested: tuple[Profile, ...] = TESTED) -> dict[str, Any]:
    """The code-selecting parameters whose full value no profile in `tested` keeps."""
    return {name: default for name, default in code_selecting_parameters(notebook).items()
            if all(profile.overrides_for(notebook.stem).get(name, default) != default
                   for profile in tested)}
