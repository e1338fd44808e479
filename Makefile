# Two commands do all set-up on a fresh machine (see README):
#   make book   - create/reuse .venv, generate the lab releases, build the HTML book into _build/html
#   make test   - create/reuse .venv, run the whole test suite (unit, labs, grading pipeline, book build)
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# nbgrader runs `alembic` by name: the venv's bin must come first on PATH for every recipe.
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0

.PHONY: book test install labs bench lock clean clean-labs

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,grade,dev]"
	@touch $(STAMP)

install: $(STAMP)

# Student versions of every lab (nbgrader generate_assignment) -> labs/release/<lab>/<lab>.ipynb
labs: $(STAMP)
	cd labs && $(BIN)/courselib release

book: $(STAMP) labs
	$(BIN)/python tools/build_book.py

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Re-resolve the exact pins (after changing pyproject.toml's dependencies).
lock: $(STAMP)
	$(BIN)/python tools/lock.py

clean-labs:
	cd labs && rm -rf release submitted autograded feedback gradebook.db grades

clean: clean-labs
	rm -rf _build
