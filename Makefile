# Bootstrap only: makes .venv with the project and its tools, installs system packages, then hands
# over to invoke (the main job) and nox (the tests). Everything real lives in src/whisper_release.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: release test system-deps venv clean

$(BIN)/.installed: pyproject.toml constraints/wer.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/wer.txt -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

system-deps:
	scripts/install-system-deps.sh

## The main job: an offline release (fetch, build, verify) pushed into the embedded local S3 store.
release: venv system-deps
	$(BIN)/invoke release --profile offline

## The whole test suite, as CI runs it.
test: venv system-deps
	$(BIN)/nox -s ci

clean:
	rm -rf dist build .nox
