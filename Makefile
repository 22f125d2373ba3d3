# Two commands set everything up: `make demo` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A prebuilt mmcv wheel is used as a pip cache only when that folder exists.
WHEEL_CACHE ?= ../shared/wheels/cpu
FIND_LINKS := $(if $(wildcard $(WHEEL_CACHE)/*.whl),--find-links $(WHEEL_CACHE),)
STAMP := $(VENV)/.mmdp-installed
PIP := $(BIN)/pip install -c constraints.txt

.PHONY: install demo test clean-venv install-mindtpy

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

# Optional, for the mdp backend 'mindtpy' only (MindtPy as in the published MDP code): GLPK, and
# IPOPT through cyipopt, which pip builds against Debian's libipopt (its link needs lapack, blas
# and gfortran). Debian ships no AMPL `ipopt` executable; mmdp.solvers.quadratic_ipopt does
# without. It needs the venv of `make install` and never redoes that install.
MINDTPY_APT := glpk-utils coinor-libipopt-dev pkg-config liblapack-dev libblas-dev gfortran gcc

install-mindtpy: | $(STAMP)
	dpkg -s $(MINDTPY_APT) >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MINDTPY_APT); }
	$(PIP) -q cyipopt
	$(BIN)/python -c "import cyipopt; print('cyipopt', cyipopt.__version__, 'on Ipopt', \
		'.'.join(map(str, cyipopt.IPOPT_VERSION)))"
	glpsol --version | head -1

clean-venv:
	rm -rf $(VENV)
