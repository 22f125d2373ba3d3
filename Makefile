# Two commands set everything up: `make demo` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A prebuilt mmcv wheel is used as a pip cache only when that folder exists.
WHEEL_CACHE ?= ../shared/wheels/cpu
FIND_LINKS := $(if $(wildcard $(WHEEL_CACHE)/*.whl),--find-links $(WHEEL_CACHE),)
STAMP := $(VENV)/.mmdp-installed
PIP := $(BIN)/pip install -c constraints.txt

.PHONY: install demo test clean-venv

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -q setuptools wheel
	$(PIP) -q torch==2.13.0 numpy
	MMCV_WITH_OPS=1 $(PIP) $(FIND_LINKS) --no-build-isolation mmcv==2.1.0
	$(PIP) -q -r requirements.txt
	# mmdet3d pins open3d and others it does not need here: take it alone, then what it imports.
	$(PIP) -q --no-deps mmdet3d==1.4.0 lyft-dataset-sdk==0.0.8
	$(PIP) -q --no-build-isolation --no-deps -e .
	$(PIP) -q torch-pruning  # the extra '.[torch-pruning]' (version in constraints.txt)
	touch $(STAMP)

demo: install
	$(BIN)/python tools/demo.py --work-dir work_dirs/demo

test: install
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
