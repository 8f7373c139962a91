# make run   — install (once) and run the app on the seeds
# make test  — install (once, with the test extras and Chromium) and run every test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test browser llama ingest bench clean

setup: $(STAMP)

# torch is pinned to the 2.13.0 CPU wheel through constraints.txt (an unpinned torch
# resolves to a 5.5 GB CUDA build). The stamp makes a second run instant.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# llama-cpp-python compiles llama.cpp from source (about 12 min on 2 idle cores, 30 min seen on
# a busy machine); pip caches the built wheel, so a later install on the same machine is quick. CPU
# only, no BLAS/GPU backends, portable (no -march=native, so a cached wheel runs on any x86-64-v3
# CPU), no libcurl. tests/test_llama_server.py runs it with a tiny model from tests/tiny_gguf.py.
LLAMA_STAMP := $(VENV)/.llama-installed
LLAMA_CPP := llama-cpp-python[server]==0.3.36
LLAMA_CMAKE_ARGS := -DGGML_CUDA=OFF -DGGML_BLAS=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
	-DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_OPENMP=OFF -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

llama: $(LLAMA_STAMP)

$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q \
		--disable-pip-version-check -c constraints.txt '$(LLAMA_CPP)' gguf
	touch $(LLAMA_STAMP)

browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

run: setup
	$(VENV)/bin/qa serve

test: setup browser llama
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py --quick

clean:
	rm -rf data artifacts
