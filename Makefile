# The two commands the README names: `make demo` and `make test`. CI runs `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What `make demo` needs: the package and its runtime dependencies, without the test and bench
# extras. A venv that `make test` has installed already has them.
RUN_STAMP := $(VENV)/.installed-run

.PHONY: demo test lint types pytest bench clean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

$(RUN_STAMP): $(BIN)/python pyproject.toml
	if [ ! $(STAMP) -nt pyproject.toml ]; then $(BIN)/python -m pip install --quiet -e .; fi
	touch $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(BIN)/openmail-bridge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy --strict bridge/

# System packages the tests run: the console's browser tests drive the system's Chromium (Debian's
# package), never a download; the unit's checks run systemd-analyze. Installed once, when missing
# from PATH (as root, or through sudo), in one apt-get call.
CHROMIUMS := chromium chromium-browser google-chrome
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

system-packages:
	@missing=""; \
	found=""; for b in $(CHROMIUMS); do command -v $$b >/dev/null 2>&1 && found=1; done; \
	[ -n "$$found" ] || missing="chromium"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$${missing:+$$missing }systemd"; \
	[ -z "$$missing" ] && exit 0; \
	echo "installing $$missing for the tests"; \
	$(SUDO) apt-get update -qq && \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$$missing >/dev/null

# Two workers; --dist loadgroup keeps each xdist_group (the browser tests) on one worker.
pytest: $(STAMP) system-packages
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test: lint types pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
