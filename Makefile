# `make serve` and `make test` each create .venv when missing and install into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8501
HOST   ?= localhost
# Another HOST than localhost needs accounts (`visionboard users add`); ALLOW_ANYONE=1 serves
# the network without sign-in, everyone an admin.
ALLOW_ANYONE ?=

.PHONY: serve test lint format config-table bench chromium postgresql clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/visionboard serve --port $(PORT) --host $(HOST) $(if $(ALLOW_ANYONE),--allow-anyone)

test: $(STAMP) chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q --timeout 600

# Debian's Chromium drives the browser test (never `playwright install`).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

# Debian's PostgreSQL: the tests start a throw-away cluster of it in a temporary folder
# (initdb + pg_ctl, a Unix socket only), so the store's tests run on both databases.
postgresql:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# README.md's config reference, regenerated from RunConfig.
config-table: $(STAMP)
	$(BIN)/python -m engine.config_table --write

bench: $(STAMP)
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_dashboard.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
