# The two commands that matter: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run serve test lint typecheck imports pytest browser browser-fresh-clone openapi bench fuzz clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "calbroker needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# `make run PORT=9000 SANDBOX_PORT=9443`: the API's port (default 8080, or CALBROKER_PORT) and the
# sandbox's (default: any free port).
PORT         ?=
SANDBOX_PORT ?=
run: $(STAMP)
	$(BIN)/calbroker demo $(if $(PORT),--port $(PORT)) $(if $(SANDBOX_PORT),--sandbox-port $(SANDBOX_PORT))

serve: $(STAMP)
	$(BIN)/calbroker serve $(if $(PORT),--port $(PORT))

test: lint typecheck imports pytest

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check

typecheck: $(STAMP)
	$(BIN)/mypy --strict service/

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP) browser
	$(BIN)/pytest

# The browser tests drive Debian's Chromium (Playwright never downloads browsers here).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	else \
		echo "The browser tests need Debian's Chromium at /usr/bin/chromium: run 'sudo apt-get install -y chromium'" >&2; \
		exit 1; \
	fi

# The browser walk through all four connect methods against `make run PORT=…` in a fresh clone of
# this repository (committed HEAD; builds the clone's own .venv). Not part of `make test`.
browser-fresh-clone: $(STAMP) browser
	$(BIN)/python -m tests.browser.fresh_clone

openapi: $(STAMP)
	$(BIN)/calbroker openapi --output openapi/openapi.json

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/availability.py
	$(BIN)/python bench/events.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/channels.py

# schemathesis, every check, against `calbroker demo` (sandbox + embedded PostgreSQL) on loopback;
# not part of `make test` (minutes). FUZZ_EXAMPLES cases per operation and phase.
FUZZ_EXAMPLES ?= 250
fuzz: $(STAMP)
	@$(BIN)/python -c 'import schemathesis' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,fuzz]'
	$(BIN)/python fuzz/run.py --examples $(FUZZ_EXAMPLES)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
