# Two entry points: `make demo` (the main job end to end on the embedded digits data)
# and `make test`. Both create .venv inside the repository when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned here: 2.13.0 is the CPU build that lies on this machine's disk;
# any other version or an open range pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test test-fast lint bench clean

$(BIN)/sane: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(BIN)/sane

demo: $(BIN)/sane
	$(BIN)/sane demo --out runs/demo

test: $(BIN)/sane
	$(BIN)/python -m pytest

# The tests not marked slow (`@pytest.mark.slow`: more than ~3 s each).
test-fast: $(BIN)/sane
	$(BIN)/python -m pytest -m "not slow"

lint: $(BIN)/sane
	$(BIN)/ruff check .

clean:
	rm -rf runs
