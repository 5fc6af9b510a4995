# Set-up and entry points; see README.md. Every target prints where the virtual environment is.
PYTHON   ?= python3
VENV     ?= .venv
BIN       = $(VENV)/bin
STAMP     = $(VENV)/.installed
# -e: an editable install (edits in the checkout take effect at once); EDITABLE= installs rtnstream as the
# wheel would (what CI does, so the test suite sees only what is packaged)
EDITABLE ?= -e

.PHONY: demo test lint bench

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(EDITABLE) '.[test]'
	touch $(STAMP)
	@echo "rtnstream is installed in $(VENV): run $(BIN)/rtnstream, or 'source $(BIN)/activate' first"

demo: $(STAMP)
	@echo "$(BIN)/rtnstream demo (the command is $(BIN)/rtnstream; 'source $(BIN)/activate' puts it on PATH)"
	$(BIN)/rtnstream demo

# $(BIN)/pytest, not python -m pytest: the checkout stays off sys.path (pytest --import-mode=importlib)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/engine.py
