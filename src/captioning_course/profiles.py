"""Profiles: one notebook, three scales.

A lesson's `parameters` cell holds the real course (`full`): COCO through TFDS, ImageNet
weights, the seed's sizes. A profile is the set of overrides papermill injects on top of
those defaults. Notebooks never branch on the profile's name; only these values change.

- `smoke`: the offline data slice, random encoder weights, sizes a 2-core CPU trains in
  minutes; it shows that the model learns.
- `rehearsal`: the full profile's sizes and code paths (image size, vocabulary cap, caption
  length, model width, batch, the CNN inside the model, encoder weights loaded from a file)
  on a few dozen slice images and one short epoch; it shows that the code a student runs on
  a GPU executes, not that it learns.
- `full`: the defaults, for a GPU machine with COCO and ImageNet weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from captioning_course.data_slice import NAME as SLICE_NAME
from captioning_course.data_slice import SliceParams
from captioning_course.weights import RandomWeights


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    timeout_s: int  # wall-clock limit for one notebook
    data_slice: SliceParams | None  # when set, the runner prepares it and injects DATA_DIR
    overrides: dict[str, dict[str, Any]]  # notebook stem -> parameters; "*" applies to all
    needs_gpu: bool = False  # the runner warns before such a run on a machine without one

    def overrides_for(self, notebook_stem: str) -> dict[str, Any]:
        return {**self.overrides.get("*", {}), **self.overrides.get(notebook_stem, {})}


SMOKE = Profile(
    name="smoke",
    description="offline data slice, untrained encoder weights, sizes for a 2-core CPU",
    timeout_s=30 * 60,
    data_slice=SliceParams(),
    overrides={
        "*": {"DATASET": SLICE_NAME},
        "image_captioning": {
            "EVAL_IMAGES": 100,
            "ENCODER_WEIGHTS": None,
            "IMG_SIZE": 150,  # a 3x3 feature grid, matching the slice's 3x3 layout
            "VOCAB_SIZE": 200,
            "MAX_CAPTION_LEN": 24,
            "ATTENTION_DIM": 256,
            "EPOCHS": 60,
            "CACHE_FEATURES": True,
        },
        "image_captioning_custom_loop": {
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
            "EVAL_IMAGES": 100,
            # Untrained MobileNetV3Small features vanish (std ~4e-10); InceptionResNetV2's do not.
            "ENCODER": "InceptionResNetV2",
            "ENCODER_WEIGHTS": None,
            "IMG_SIZE": 150,  # a 3x3 feature grid, matching the slice's 3x3 layout
            "VOCAB_SIZE": 200,
            "UNITS": 128,
            "DROPOUT": 0.1,
            "LEARNING_RATE": 1e-3,
        },
    },
)

REHEARSAL = Profile(
    name="rehearsal",
    description="full sizes and code paths on a few dozen slice images, one short epoch",
    timeout_s=20 * 60,
    data_slice=SliceParams(),
    overrides={
        "*": {"DATASET": SLICE_NAME},
        "image_captioning": {
            "TRAIN_SPLIT": "train[:64]",
            "EVAL_IMAGES": 32,
            "ENCODER_WEIGHTS": RandomWeights("InceptionResNetV2"),
        },
        "image_captioning_custom_loop": {
            "TRAIN_SPLIT": "train[:64]",  # 320 image/caption pairs
            "EVAL_IMAGES": 32,
            "ENCODER_WEIGHTS": RandomWeights("InceptionV3"),
        },
        "image_captioning_transformer": {
            "TRAIN_IMAGES": 64,  # 320 image/caption pairs
            "EVAL_IMAGES": 32,
            "ENCODER_WEIGHTS": RandomWeights("MobileNetV3Small"),
        },
    },
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
