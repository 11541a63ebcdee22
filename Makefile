# Two entry points for users: `make demo` and `make test`. Both create .venv when missing and
# install everything from package names (versions pinned in constraints.txt only).
PYTHON    ?= python3.11
VENV      ?= .venv
BIN       := $(VENV)/bin
PIP       := $(BIN)/python -m pip --disable-pip-version-check
# Where a prebuilt mmcv 2.1.0 wheel may lie (CI points it at ../shared/wheels); built into .wheels otherwise.
VISIONATTN_WHEELS ?= $(wildcard ../shared/wheels)
WHEEL_DIRS := $(VISIONATTN_WHEELS) .wheels
FIND_LINKS := $(foreach d,$(WHEEL_DIRS),--find-links $(d))
STAMP     := $(VENV)/.visionattn-installed
PYTEST_ARGS ?= -n 2

.PHONY: install demo test test-all test-cuda samples clean

install: $(STAMP)

$(STAMP): setup.cfg constraints.txt Makefile tools/build_mmcv_wheel.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt setuptools wheel ninja
	$(PIP) install -q -c constraints.txt torch torchvision
	@if [ -z "$(wildcard $(addsuffix /mmcv-2.1.0-*.whl,$(WHEEL_DIRS)))" ]; then \
		PIP="$(PIP)" bash tools/build_mmcv_wheel.sh .wheels; fi
	$(PIP) install -q -c constraints.txt $(FIND_LINKS) -e '.[dev,det,3d,face]'
	# mmengine pulls opencv-python, albumentations the headless build: the last one installed owns cv2.
	$(PIP) install -q -c constraints.txt --force-reinstall --no-deps opencv-python-headless
	$(BIN)/python -W ignore -c "import pkg_resources, cv2, torch, timm, mmengine, mmdet, mmseg, visionattn; print('visionattn', visionattn.__version__, 'torch', torch.__version__)"
	@touch $(STAMP)

samples: $(STAMP)
	$(BIN)/python tools/make_samples.py

demo: samples
	$(BIN)/python tools/demo.py

test: samples
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: samples
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not cuda"

test-cuda:
	python3 -m pytest -m cuda

clean:
	rm -rf work_dirs datasets/samples .pytest_cache
