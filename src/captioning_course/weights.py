"""Encoder weights in a file, for runs that load weights the way the course does but offline.

On a GPU machine a lesson's encoder gets ImageNet weights (`weights="imagenet"`), which Keras
downloads; an instructor may instead copy them to disk and pass the file's path. Nothing here
can download them, so the rehearsal profile proves that second path with a stand-in: the same
architecture, randomly initialised from a fixed seed, saved once to a `.weights.h5` file that
`keras.applications.<Name>(include_top=False, weights=path)` then loads.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class RandomWeights:
    """A profile value that becomes the path of a seeded random weights file for `application`."""

    application: str  # a keras.applications constructor, e.g. "InceptionResNetV2"
    seed: int = 0

    def path(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / "weights" / f"{self.application}_notop_random{self.seed}.weights.h5"

    def value(self, data_dir: Path, output_dir: Path) -> str:
        return str(self.path(data_dir).resolve())

    def prepare(self, data_dir: str | Path, data_slice: object = None) -> Path:
        """Write the file unless it exists; a half-written file is never left under its name.

        `data_slice` is not used: the weights do not depend on the data."""
        target = self.path(data_dir)
        if target.is_file():
            return target
        import keras

        keras.utils.set_random_seed(self.seed)
        model = getattr(keras.applications, self.application)(include_top=False, weights=None)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.weights.h5")
        model.save_weights(partial)
        partial.replace(target)
        print(f"{self.application}: saved seeded random weights to {target}")
        return target
