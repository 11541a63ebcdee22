# Two entry points for users: `make demo` and `make test`. Both create .venv when missing and
# install from package names (versions pinned in constraints.txt only).
#   make demo   the core library only (torch, timm, mmengine...): classification, stereo, restoration
#   make test   everything: the core plus the det, 3d, medical, face and dev extras (mmcv needs a wheel)
PYTHON    ?= python3.11
VENV      ?= .venv
BIN       := $(VENV)/bin
PIP       := $(BIN)/python -m pip --disable-pip-version-check
# Where a prebuilt mmcv 2.1.0 wheel may lie (CI points it at ../shared/wheels); built into .wheels otherwise.
VISIONATTN_WHEELS ?= $(wildcard ../shared/wheels)
WHEEL_DIRS := $(VISIONATTN_WHEELS) .wheels
FIND_LINKS := $(foreach d,$(WHEEL_DIRS),--find-links $(d))
CORE      := $(VENV)/.visionattn-core
STAMP     := $(VENV)/.visionattn-installed
PYTEST_ARGS ?= -n 2

.PHONY: install install-core demo test test-all test-cuda samples clean

install: $(STAMP)

install-core: $(CORE)

# The core, editable: what `pip install visionattn` gives, from this checkout.
$(CORE): setup.cfg setup.py constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt setuptools wheel
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e .
	# mmengine pulls opencv-python, albumentations the headless build: the last one installed owns cv2.
	$(PIP) install -q -c constraints.txt --force-reinstall --no-deps opencv-python-headless
	$(BIN)/python -W ignore -c "import cv2, torch, timm, mmengine, visionattn; print('visionattn', visionattn.__version__, 'torch', torch.__version__)"
	@touch $(CORE)

# Everything on top of the core: mmcv/mmdet/mmseg (det), spconv (3d), medical formats, LPIPS/FID/LMDB (face), test tools.
$(STAMP): $(CORE) tools/build_mmcv_wheel.sh
	$(PIP) install -q -c constraints.txt ninja
	@if [ -z "$(wildcard $(addsuffix /mmcv-2.1.0-*.whl,$(WHEEL_DIRS)))" ]; then \
		PIP="$(PIP)" bash tools/build_mmcv_wheel.sh .wheels; fi
	$(PIP) install -q -c constraints.txt $(FIND_LINKS) -e '.[dev,det,3d,medical,face]'
	$(PIP) install -q -c constraints.txt --force-reinstall --no-deps opencv-python-headless
	$(BIN)/python -W ignore -c "import pkg_resources, cv2, torch, timm, mmengine, mmdet, mmseg, visionattn; print('visionattn', visionattn.__version__, 'torch', torch.__version__)"
	@touch $(STAMP)

samples: $(STAMP)
	$(BIN)/python tools/make_samples.py

demo: $(CORE)
	$(BIN)/python tools/make_samples.py --only imagenet
	$(BIN)/python tools/demo.py

test: samples
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: samples
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not cuda"

test-cuda: $(STAMP)
	$(BIN)/python -m pytest -m cuda

clean:
	rm -rf work_dirs datasets/samples .pytest_cache build
