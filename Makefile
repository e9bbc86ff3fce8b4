# Two commands for a newcomer: `make demo` and `make test` (each installs what it needs first).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= plastiscope-demo

LOCK := constraints.txt

.PHONY: install demo demo-quick test browser bench lock

install: $(VENV)/.installed

# Exactly the versions the tests passed with (constraints.txt); torch first, pinned to the CPU build on disk:
# a bare `torch` requirement would pull a CUDA build.
$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) torch==2.13.0
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev,ray]"
	touch $@

# Regenerate constraints.txt: resolve pyproject.toml's ranges afresh in a throwaway environment and record what
# was installed. Then run `make test` (it reinstalls from the new file) before committing it.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q ".[dev,ray]"
	{ sed -n '1,2p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^plastiscope==' \
	  | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv

# The demo: 4 weight decays x 2 seeds of a 78k-parameter Llama, 20 tokens per parameter, 30 epochs of 1,500 glosses, trained
# two runs at a time (one process and one torch thread each), every analysis in two processes, the report.
# demo.json records the seconds each part took (README: measured times). A rerun reuses everything.
demo: install
	$(VENV)/bin/plastiscope demo --out $(DEMO_OUT)

# A first look in a few minutes: 3 weight decays x 2 seeds of a 58k-parameter model, fewer documents analysed.
demo-quick: install
	$(VENV)/bin/plastiscope demo --quick --out $(DEMO_OUT)-quick

# Headless Chromium for the report's browser test (Debian's package; never a browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: install browser
	$(PY) -m pytest -q

bench: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done
