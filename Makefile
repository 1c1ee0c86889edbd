# Two commands do all set-up on a fresh machine:
#   make demo   -> create .venv, install, run a small real active-learning campaign
#   make test   -> create .venv, install, run the default test suite (what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install constraints demo test test-all lint bench clean

# constraints.txt: every package at the version the test suite passed on (pip freeze of such a venv, minus
# sapis itself), so a fresh machine installs the same set instead of whatever is newest that day.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# No NVIDIA GPU: pin the CPU build of torch before anything can pull a CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"; fi
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Regenerate constraints.txt from the current venv (run after `make test` passed on it). The local version
# label of a CPU torch build (+cpu) is dropped so the same file also serves machines with a GPU.
constraints:
	{ echo "# pip freeze of a venv on which the test suite passed (make constraints); used by make install."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(sapis|-e )' | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > constraints.txt

demo: $(STAMP)
	$(BIN)/sapis demo

# One thread per process: two cores, and OpenMP oversubscription costs 10-80x here.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not gpu" -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/python tools/typecheck.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
