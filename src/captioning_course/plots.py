"""The figures every lesson draws: where each word looked, and captioned photos.

The lessons compute what goes into them (attention weights, captions); these functions only
lay the results out, so that the three lessons draw them the same way from one copy.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from matplotlib.figure import Figure

from captioning_course.images import read_image


def plot_attention(photo: np.ndarray, words: Sequence[str], maps, grid: tuple[int, int], *,
                   columns: int = 5, path: str | Path | None = None) -> None:
    """One panel per word: its weights over the regions, `maps` (words, rows * cols), drawn
    as the `grid` (rows, cols) stretched over the photo, brighter where the model looked more.
    With `path`, the figure is also saved there."""
    if not words:  # an untrained model may well end the caption at once
        print("The caption is empty, so there is no attention to show.")
        return
    maps = np.asarray(maps, dtype="float32")
    rows, cols = grid
    if maps.ndim != 2 or maps.shape[0] < len(words) or maps.shape[1] != rows * cols:
        raise ValueError(f"expected one map of {rows}x{cols} = {rows * cols} weights per word "
                         f"for {len(words)} words, got maps of shape {maps.shape}")
    columns = min(columns, len(words))
    # A figure pyplot does not track: drawn from an upload button's callback, which JupyterLab
    # runs beside the kernel's main thread, pyplot's own redraw of its figures after every
    # widget message would draw on the same canvas at the same time and blank parts of it.
    fig = Figure(figsize=(2.8 * columns, 2.9 * math.ceil(len(words) / columns)))
    axes = fig.subplots(math.ceil(len(words) / columns), columns, squeeze=False)
    for ax, word, weights in zip(axes.flat, words, maps, strict=False):
        ax.imshow(photo)
        ax.imshow(weights.reshape(rows, cols), cmap="inferno", alpha=0.6,
                  extent=(0, photo.shape[1], photo.shape[0], 0), interpolation="nearest")
        ax.set_title(word)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80)
    display(fig)


def show_captioned_photos(paths: Sequence[str | Path], captions: Mapping[str, Mapping], *,
                          columns: int = 4) -> None:
    """Each photo under its captions: `captions[name]` holds a "greedy" caption, shown in
    capitals, and a list of "sampled" ones."""
    rows = math.ceil(len(paths) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 6 * rows), squeeze=False)
    for ax, path in zip(axes.flat, paths, strict=False):
        written = captions[Path(path).name]
        lines = [written["greedy"].upper(), *written["sampled"]]
        ax.imshow(read_image(path))
        ax.set_title("\n".join(textwrap.fill(line, 40) for line in lines), fontsize=8,
                     loc="left")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    plt.show()
