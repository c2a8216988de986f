# Two commands do all the set-up on a fresh machine (see README):
#   make demo   train a small attention model with RAM on the built-in synthetic street scenes, export it
#               (fp32 + int8 ONNX) and verify both (`harden demo`)
#   make test   run the test suite
# Both create .venv on first use. torch==2.13.0 is installed first, on its own, so that pip finds
# the CPU build and never resolves an unpinned torch with GBs of CUDA packages (docs/design.md §7).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_DIR    ?= runs/demo
DEMO_MODEL  ?= segformer_tiny
DEMO_EPOCHS ?= 30

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip uninstall --quiet --yes harden 2>/dev/null || true  # the distribution's name before it became harden-seg
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/harden demo --model $(DEMO_MODEL) --epochs $(DEMO_EPOCHS) --out $(DEMO_DIR) --overwrite

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# the fast lane: every test that neither trains, exports nor verifies a model (~25 s on 2 cores)
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/ram_latency.py
	$(BIN)/python bench/attack_cost.py
	$(BIN)/python bench/ort_latency.py
	$(BIN)/python bench/verify_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
