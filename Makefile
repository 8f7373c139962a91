# make run   — install (once) and run the app on the seeds
# make test  — install (once, with the test extras and Chromium) and run every test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test browser ingest bench clean

setup: $(STAMP)

# torch is pinned to the 2.13.0 CPU wheel through constraints.txt (an unpinned torch
# resolves to a 5.5 GB CUDA build). The stamp makes a second run instant.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

run: setup
	$(VENV)/bin/qa ingest
	$(VENV)/bin/qa search "Quand la Thaïlande a-t-elle adhéré à la CICA ?" -k 5

test: setup browser
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py --quick

clean:
	rm -rf data artifacts
