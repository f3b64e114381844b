# The single entry point of the course. `make help` lists the targets.
PROFILE ?= smoke
NOTEBOOKS ?=
VENV := .venv
PY := $(VENV)/bin/python
# The first Python that TensorFlow 2.21 supports (3.10 to 3.13), unless PYTHON is given.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python3.10; do \
	$$p -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' \
	2>/dev/null && { echo $$p; break; }; done)
# `make test` also runs the lessons on the oldest supported Python, whose pins differ (Keras
# 3.12): in its own environment, with the course kernel registered inside it only.
OLDEST_PYTHON ?= $(shell for p in python3.10 $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10); do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null && { echo $$p; break; }; done)
OLDEST_VENV := .venv-py3.10
OLDEST_INSTALLED := $(OLDEST_VENV)/.installed
# GPU=1 adds TensorFlow's CUDA libraries; by default, when an NVIDIA GPU answers.
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
INSTALLED := $(VENV)/.installed$(if $(filter 1,$(GPU)),-gpu)
TENSORFLOW_PIN := $(shell grep -oE '^tensorflow==[^ ;#]+' requirements.txt)

.PHONY: help install lab data execute-solutions test check bench labs lint nbval grade clean

help:
	@echo "make install            create .venv with the pinned environment and register the"
	@echo "                        kernel 'Python (captioning course)' [GPU=1] [PYTHON=python3.X]"
	@echo "make lab                start the course's JupyterLab on labs/"
	@echo "make execute-solutions  run every solution headless [PROFILE=smoke|rehearsal|full] [NOTEBOOKS=...]"
	@echo "make test               run the test suite (every solution: smoke, and rehearsal on Python 3.10)"
	@echo "make check              lint, generated copies up to date, every test that executes no notebook"
	@echo "make bench              measure decoding, training and feature extraction speeds; build/bench/bench.json"
	@echo "make grade SUBMISSIONS=dir  grade every student notebook under dir [PROFILE=...]; table in build/grades/"
	@echo "make data               generate the offline data slice in data/"
	@echo "make labs               regenerate solutions/ and labs/ from notebooks/"
	@echo "make lint               ruff on .py and .ipynb"
	@echo "make nbval              validate parameterised solutions with nbval [PROFILE=...] [DATA_DIR=...]"

# `make install` always points the kernel at this clone: it is what a lesson opened in the
# wrong kernel tells the student to run. Other targets register it only with a new .venv.
install: $(INSTALLED)
	@$(PY) -m captioning_course.kernel

# Rebuilt whenever the pins or the package metadata change.
$(INSTALLED): requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "make install needs Python 3.10 to 3.13 (the versions TensorFlow 2.21 supports): install one, e.g. python3.11, or name it with PYTHON=..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
ifeq ($(GPU),1)
	$(PY) -m pip install --quiet "$(subst tensorflow==,tensorflow[and-cuda]==,$(TENSORFLOW_PIN))"
endif
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m captioning_course.kernel
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -c "import tensorflow as tf; print('TensorFlow', tf.__version__, 'sees', [d.name for d in tf.config.list_physical_devices()])"
	touch $@

$(OLDEST_INSTALLED): requirements.txt pyproject.toml
	@test -n "$(OLDEST_PYTHON)" || { echo "make test also runs the lessons on Python 3.10, the oldest the course supports: install it (e.g. pyenv install 3.10), or name it with OLDEST_PYTHON=..."; exit 1; }
	test -x $(OLDEST_VENV)/bin/python || $(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(OLDEST_VENV)/bin/python -m captioning_course.kernel --inside-only
	touch $@

# Jupyter refuses to run as root unless told; containers often run as root.
lab: $(INSTALLED)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/labs \
		$(if $(filter 0,$(shell id -u)),--allow-root)

data: $(INSTALLED)
	$(PY) -m captioning_course.data_slice --data-dir data

execute-solutions: $(INSTALLED)
	$(PY) -m captioning_course.runner --profile $(PROFILE) $(NOTEBOOKS)

test: $(INSTALLED) $(OLDEST_INSTALLED)
	COURSE_OLDEST_PYTHON=$(OLDEST_VENV)/bin/python $(PY) -m pytest

# The quick loop for an instructor editing a lesson: about a minute.
check: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow"

# Where the main lesson's time goes, on this machine: a few minutes, not a test.
bench: $(INSTALLED)
	$(PY) -m captioning_course.bench

labs: $(INSTALLED)
	$(PY) -m captioning_course.labs

lint: $(INSTALLED)
	$(PY) -m ruff check .

grade: $(INSTALLED)
	@test -n "$(SUBMISSIONS)" || { echo "make grade needs SUBMISSIONS=folder of the students' notebooks"; exit 2; }
	$(PY) -m captioning_course.grade "$(SUBMISSIONS)" --profile $(PROFILE)

# nbval runs the prepared copies; its kernel starts in their folder, so the runner injects
# absolute paths for data, outputs and sample images. DATA_DIR=... points every lesson at a
# prepared dataset copy, as a GPU runner's COCO.
nbval: $(INSTALLED)
	$(PY) -m captioning_course.runner --profile $(PROFILE) --build-dir build/nbval --nbval \
		$(if $(DATA_DIR),-p DATA_DIR "$(DATA_DIR)") $(NOTEBOOKS)

clean:
	rm -rf build
