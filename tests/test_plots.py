"""The figures the lessons share: attention panels and captioned photos."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from captioning_course import plots  # noqa: E402
from captioning_course.plots import plot_attention, show_captioned_photos  # noqa: E402

PHOTO = np.zeros((30, 40, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def figures_kept(monkeypatch):
    """plt.show closes nothing under Agg: keep the figures to look at, then close them."""
    monkeypatch.setattr(plt, "show", lambda: None)
    yield
    plt.close("all")


def titles():
    return [ax.get_title(loc=loc) for ax in plt.gcf().axes for loc in ("center", "left")
            if ax.get_title(loc=loc)]


def test_each_word_gets_its_map_over_the_photo(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(plots, "display", shown.append)
    maps = np.eye(6, dtype="float32")  # word i looks at region i of a 2x3 grid
    plot_attention(PHOTO, ["a", "red", "circle", "on", "the", "left"], maps, (2, 3),
                   path=tmp_path / "attention.png")
    [fig] = shown
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "a", "red", "circle", "on", "the", "left"]
    drawn = [image.get_array() for ax in fig.axes for image in ax.get_images()][1::2]
    assert np.argwhere(drawn[2]).tolist() == [[0, 2]]  # the third word's region
    assert (tmp_path / "attention.png").stat().st_size > 0


def test_an_empty_caption_says_so_and_draws_nothing(capsys):
    plot_attention(PHOTO, [], np.zeros((0, 6)), (2, 3))
    assert "empty" in capsys.readouterr().out
    assert not plt.get_fignums()


@pytest.mark.parametrize("shape", [(2, 5), (3,), (1, 6)])
def test_maps_that_do_not_fit_the_grid_are_refused_with_their_shape(shape):
    with pytest.raises(ValueError, match=rf"2x3 = 6 weights per word for 2 words.*{shape}"):
        plot_attention(PHOTO, ["a", "dog"], np.zeros(shape), (2, 3))


def test_captioned_photos_show_the_greedy_caption_first_in_capitals(tmp_path):
    paths = []
    for name in ("one.png", "two.jpg", "three.png", "four.png", "five.png"):
        Image.new("RGB", (20, 10), (200, 20, 20)).save(tmp_path / name)
        paths.append(tmp_path / name)
    captions = {p.name: {"greedy": f"a {p.stem} photo", "sampled": ["x", "y"]} for p in paths}
    show_captioned_photos(paths, captions)
    assert titles() == [f"A {p.stem.upper()} PHOTO\nx\ny" for p in paths]
    assert len(plt.gcf().axes) == 8  # two rows of four
