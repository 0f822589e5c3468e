# Reproduction of "Identification of nodal micrometastasis in colorectal cancer using deep
# learning on annotation-free whole-slide images" (Modern Pathology, 2021) on its pinned stack.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
NP    ?= 2
OUT   ?= runs/demo
CONFIG ?= configs/demo.yaml
PREDICTIONS ?=
MANIFEST ?=

# python3.7: on PATH, else a pyenv 3.7 install.
PYTHON37 ?= $(shell for c in python3.7 $$HOME/.pyenv/versions/3.7*/bin/python3.7 /usr/bin/python3.7; do \
	  $$c -c 'import sys; assert sys.version_info[:2] == (3, 7)' 2>/dev/null && { command -v $$c || echo $$c; } && break; done)

.PHONY: help setup system test reproduce-table docker docker-ngc lint-docker clean

help:
	@echo "make setup            create .venv (Python 3.7) with the pinned stack (TF 1.15.3, Horovod 0.19.0)"
	@echo "make test             run the test suite"
	@echo "make reproduce-table  synthetic cohort -> prepare -> train (mpirun -np $(NP)) -> predict + CAM -> table"
	@echo "                      PREDICTIONS=P.csv [MANIFEST=M.csv]: table from your predictions"
	@echo "                      CONFIG=configs/paper.yaml MANIFEST=M.csv: the paper's protocol on your slides"
	@echo "make docker           build the CUDA 10.0 image (needs a Docker engine)"
	@echo "make docker-ngc       build the image on NVIDIA's NGC TF1 container (Ampere/Hopper GPUs)"

system:
	@if [ "$$(id -u)" = 0 ]; then bash docker/install-system.sh; \
	 else bash docker/install-system.sh || echo "make: continuing; install the system packages as root"; fi

$(VENV)/.stamp: requirements.txt docker/install-python.sh setup.py
	@if [ -z "$(PYTHON37)" ]; then \
	  echo "make setup: python3.7 not found. Install it with 'pyenv install 3.7.16' (then PYTHON37=~/.pyenv/versions/3.7.16/bin/python3.7), or use the Docker image (make docker)." >&2; exit 1; fi
	@[ -x $(PY) ] || $(PYTHON37) -m venv $(VENV)
	bash docker/install-python.sh $(PY) requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

setup: system $(VENV)/.stamp

test: setup
	$(PY) -m pytest -q tests

reproduce-table: setup
	$(PY) -m reproduce demo --out $(OUT) --np $(NP) --config $(CONFIG) \
	  $(if $(PREDICTIONS),--predictions $(PREDICTIONS)) $(if $(MANIFEST),--manifest $(MANIFEST))

lint-docker: setup
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.ngc

docker:
	docker build -f docker/Dockerfile -t wsi-micromet:tf1.15.3 .

docker-ngc:
	docker build -f docker/Dockerfile.ngc -t wsi-micromet:ngc-23.03-tf1 .

clean:
	rm -rf $(VENV) runs
