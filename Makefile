# Two commands do all set-up on a fresh machine (see README):
#   make book   - create/reuse .venv, generate the lab releases, build the HTML book into _build/html
#   make test   - create/reuse .venv, run the whole test suite (unit, labs, grading pipeline, book build)
#   make unit   - the fast loop: every test not marked slow, on 2 workers (a few minutes)
#   make        - the student edition (what may be published) in _build/student, scanned for answers
#   make portability - the book's claims re-executed with the slowest kernels the libraries let us force
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# nbgrader runs `alembic` by name: the venv's bin must come first on PATH for every recipe.
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
.DEFAULT_GOAL := student

.PHONY: book test student dist install labs bench lock clean clean-labs browser sandbox postgres portability

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,grade,deploy,labs,cluster,dev]"
	@touch $(STAMP)

install: $(STAMP)

# Student versions of every lab (nbgrader generate_assignment) -> labs/release/<lab>/<lab>.ipynb.
# One file target per lab: a lab is regenerated only when a file of its source folder or the nbgrader
# config changed (or the venv was reinstalled), so a no-change `make book` skips nbgrader entirely.
LAB_NAMES := $(notdir $(wildcard labs/source/lab*))
define lab_release
labs/release/$(1)/$(1).ipynb: $(STAMP) labs/nbgrader_config.py $(shell find labs/source/$(1) -type f -not -path '*/.ipynb_checkpoints/*' 2>/dev/null)
	cd labs && $(BIN)/courselib release $(1)
endef
$(foreach lab,$(LAB_NAMES),$(eval $(call lab_release,$(lab))))
labs: $(foreach lab,$(LAB_NAMES),labs/release/$(lab)/$(lab).ipynb)

book: $(STAMP) sandbox labs dist
	$(BIN)/python tools/build_book.py

# courselib's sdist and wheel (ondevice-ml-courselib), built offline into _build/dist; the book ships them
dist: $(STAMP)
	$(BIN)/python tools/build_dist.py

# The student edition: the book, the lab releases, courselib, no solutions or hidden tests (tools/edition.py)
student: book
	$(BIN)/python tools/edition.py

test: $(STAMP) browser sandbox postgres
	@rm -f _build/screenshots/report.txt
	@$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=25; status=$$?; \
	  if [ -f _build/screenshots/report.txt ]; then head -1 _build/screenshots/report.txt; fi; exit $$status

# Headless Chromium for tests/test_browser.py (Debian's packages). Installed when missing and we are
# root; otherwise the browser tests are skipped and say why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null) || echo "apt-get could not install chromium: the browser tests will be skipped"; \
	else echo "chromium/chromedriver missing and not root: the browser tests will be skipped" \
	  "(install Debian's chromium and chromium-driver)"; fi

# PostgreSQL for tests/test_postgres.py (Debian's postgresql; the test fixture starts a private server in a
# temporary data directory on 127.0.0.1). Installed when missing and we are root; otherwise those tests skip.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing postgresql for the gradebook tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	    || echo "apt-get could not install postgresql: the PostgreSQL tests will be skipped"; \
	else echo "PostgreSQL missing and not root: the PostgreSQL tests will be skipped (install Debian's postgresql)"; fi

# bubblewrap (Debian's `bubblewrap`, the sandbox behind Flatpak) isolates student code in
# `courselib grade`. Installed when missing and we are root; otherwise grading refuses (unless
# --no-sandbox) and the grading tests are skipped and say why.
sandbox:
	@if command -v bwrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing bubblewrap for the grading sandbox (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	    || echo "apt-get could not install bubblewrap: the grading tests will be skipped"; \
	else echo "bwrap missing and not root: the grading tests will be skipped (install Debian's bubblewrap)"; fi

# The fast loop (CONTRIBUTING.md): every test not marked `slow` (no book build, browser, lab pipeline or
# grading batch); the workflow .github/workflows/tests.yml runs it on every push and pull request.
.PHONY: unit
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The book's claims re-executed with the slowest kernels PyTorch, oneDNN, NumPy, numba and faiss let us force
# (tools/portability.py; what it can and cannot simulate: CONTRIBUTING.md, "Portability check").
portability: $(STAMP) labs
	$(BIN)/python tools/portability.py

# Re-resolve the exact pins (after changing pyproject.toml's dependencies).
lock: $(STAMP)
	$(BIN)/python tools/lock.py

clean-labs:
	cd labs && rm -rf release submitted autograded feedback gradebook.db grades

clean: clean-labs
	rm -rf _build
