"""A profile swaps bytes, never branches: every code path of the full course runs in a profile
that `make test` executes, checked from the lessons' parameters cells and the profiles."""

from __future__ import annotations

import nbformat
import pytest

from captioning_course import profiles
from captioning_course.profiles import Profile, RunFolder, Source
from conftest import REPO

LESSONS = sorted((REPO / "notebooks").glob("*.ipynb"))


def lesson(folder, parameters: str, *cells: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                *map(nbformat.v4.new_code_cell, cells)]
    path = folder / "lesson.ipynb"
    nbformat.write(nb, path)
    return path


def profile_setting(name: str, value) -> Profile:
    return Profile(name="p", description="", timeout_s=1, data_slice=None,
                   overrides={"lesson": {name: value}})


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_code_path_of_the_full_course_runs_in_a_tested_profile(path):
    untested = profiles.untested_defaults(path)
    assert not untested, (
        f"{path.name} selects code with {sorted(untested)}, and no profile that `make test` "
        f"runs keeps the full course's value ({untested}): let a profile keep it, swapping only "
        "where the bytes come from")


def test_the_lessons_branch_on_what_the_profiles_must_keep():
    selecting = {path.stem: set(profiles.code_selecting_parameters(path)) for path in LESSONS}
    assert selecting["image_captioning"] >= {"DATASET"}
    assert selecting["image_captioning_transformer"] >= {"ENCODER"}
    assert all("DATASET" in names for lesson, names in selecting.items()
               if lesson != "image_captioning_transformer")  # which only reads Flickr8k


@pytest.mark.parametrize("parameters, code, selecting", [
    ('FLAG = True\nN = 3', "x = N * 2", {"FLAG"}),  # a switch, even before any branch uses it
    ('MODE = "a"', "if MODE == 'a':\n    pass", {"MODE"}),
    ('MODE = None', "if not MODE:\n    pass", {"MODE"}),
    ('MODE = "a"\nN = 2', "y = 1 if MODE and N else 0", {"MODE", "N"}),
    ('KIND = "x"', 'CHOICES = {"x": 1}\nmade = CHOICES[KIND]', {"KIND"}),
    ('NAME = "coco"', "import tensorflow_datasets as tfds\nds = tfds.load(NAME, split='a')",
     {"NAME"}),
    ('NAME = "coco"', "ds = tfds.builder(name=NAME)", {"NAME"}),
    ('APP = "Net"', "import keras\nnet = getattr(keras.applications, APP)", {"APP"}),
    # A count compared with another count selects no code.
    ('N = 3\nLIMIT = 5', "while N < 2:\n    pass\nok = total >= LIMIT", {"N"}),
    ('DIR = "x"\nSPLIT = "train"', "%time rows = load(DIR)\ninfo.splits[SPLIT]", set()),
])
def test_code_selecting_parameters_are_found_in_the_code(tmp_path, parameters, code, selecting):
    assert set(profiles.code_selecting_parameters(lesson(tmp_path, parameters, code))) == selecting


def test_an_override_that_swaps_a_branch_in_every_tested_profile_is_named(tmp_path):
    path = lesson(tmp_path, 'ENCODER = "Small"\nWEIGHTS = "imagenet"',
                  'ENCODERS = {"Small": 1, "Big": 2}\ncnn = ENCODERS[ENCODER]')
    swapping = (profile_setting("ENCODER", "Big"), profile_setting("WEIGHTS", "file.h5"))
    assert profiles.untested_defaults(path, swapping[:1]) == {"ENCODER": "Small"}
    # Weights from a file are other bytes, not another branch.
    assert profiles.untested_defaults(path, swapping[1:]) == {}
    assert profiles.untested_defaults(path, swapping) == {}  # one profile keeps "Small"


def test_sources_stand_for_bytes_the_runner_makes(tmp_path):
    for value in (v for p in profiles.TESTED for o in p.overrides.values() for v in o.values()
                  if not isinstance(v, str | int | float | bool | list | type(None))):
        assert isinstance(value, Source), value
    folder = RunFolder("datasets")
    assert folder.value(tmp_path / "data", tmp_path / "run") == str(tmp_path / "run" / "datasets")
