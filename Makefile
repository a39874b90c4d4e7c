# Two commands on a fresh machine:  `make run` starts the node, `make test` runs the suite.
# Each installs what it needs first (a virtual environment in .venv, torch 2.13.0 CPU,
# and for the tests the Debian packages dcmtk and orthanc).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := dcmtk orthanc dicom3tools systemd chromium postgresql libgl1 libglib2.0-0

.PHONY: run test test-fast install debian-deps lint format bench stress demo clean

run: $(STAMP)
	$(BIN)/ai-node serve --config ae_config.yaml

test: $(STAMP) debian-deps
	$(BIN)/python -m pytest

# the inner loop: every test not marked slow, stopping at the first failure (under a minute)
test-fast: $(STAMP) debian-deps
	$(BIN)/python -m pytest -m "not slow" -x -q

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,postgres]'
	touch $(STAMP)

debian-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

CODE := common config demo inference jobs node storage tests bench

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy $(CODE)

format: $(STAMP)
	$(BIN)/ruff check --fix -q $(CODE)
	$(BIN)/ruff format -q $(CODE)

# the stress campaigns of docs/reliability.md (kill -9 rounds, outage, bad input, resources,
# disk full: about 10 minutes, root for the tmpfs); the fast part runs in `make test`
stress: $(STAMP) debian-deps
	mkdir -p runs/stress
	$(BIN)/python tests/stress/__main__.py --out runs/stress/full.json

# issue 10: one synthetic patient, three studies with head motion, through a node it starts
# (the shipped demo model, a temporary data_dir); prints tracks, RANO-BM and the truth, writes
# demo_report.html (about 8 minutes on 2 cores)
demo: $(STAMP)
	$(BIN)/ai-node demo --config ae_config.yaml --output demo_report.html

bench: $(STAMP) debian-deps
	$(BIN)/python bench/receive.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/end_to_end.py

clean:
	rm -rf $(VENV) build *.egg-info
