# The single entry point of the course. `make help` lists the targets.
PROFILE ?= smoke
NOTEBOOKS ?=
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: help install data execute-solutions test labs lint nbval clean

help:
	@echo "make install            create .venv with the pinned environment and the python3 kernel"
	@echo "make execute-solutions  run every solution headless [PROFILE=smoke|full] [NOTEBOOKS=...]"
	@echo "make test               run the test suite (executes every solution in the smoke profile)"
	@echo "make data               generate the offline data slice in data/"
	@echo "make labs               regenerate solutions/ and labs/ from notebooks/"
	@echo "make lint               ruff on .py and .ipynb"
	@echo "make nbval              validate parameterised solutions with nbval [PROFILE=smoke|full]"

install: $(INSTALLED)

# Rebuilt whenever the pins or the package metadata change. The kernel named python3 is
# installed inside .venv, so papermill, nbval and Jupyter run every lesson in this environment.
$(INSTALLED): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m captioning_course.kernel
	touch $@

data: install
	$(PY) -m captioning_course.data_slice --data-dir data

execute-solutions: install
	$(PY) -m captioning_course.runner --profile $(PROFILE) $(NOTEBOOKS)

test: install
	$(PY) -m pytest

labs: install
	$(PY) -m captioning_course.labs

lint: install
	$(PY) -m ruff check .

# nbval runs the prepared copies; its kernel starts in their folder, so the runner injects
# absolute paths for data, outputs and sample images.
nbval: install
	$(PY) -m captioning_course.runner --profile $(PROFILE) --build-dir build/nbval --prepare-only $(NOTEBOOKS)
	$(PY) -m pytest --nbval-lax -p no:cacheprovider -o addopts="" build/nbval/$(PROFILE)

clean:
	rm -rf build
