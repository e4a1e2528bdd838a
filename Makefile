# Every habit is one word. `make run` and `make test` set up from scratch on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/mnist

.PHONY: setup system-deps image run monitor rules responsiveness model train evaluate plots export test lint format generate bench clean

setup: $(VENV)/.installed .tools/node_modules/.bin/buf system-deps

# Debian's prometheus package: a real Prometheus and promtool for the deploy/ tests and `make monitor`.
system-deps:
	scripts/install_system_deps.sh

# buf (proto lint and breaking-change checks) comes from the npm registry.
.tools/node_modules/.bin/buf:
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e clients/python -e '.[local,triton,train,triton-server,dev]'
	touch $@

# Both service images, vae-service:<version> (CPU PyTorch) and vae-service:<version>-triton (no torch), with podman
# (installed from Debian if missing); a stand-in base image where no registry answers. Prints sizes and layers.
image: setup
	$(PY) -m tools.containers.images $(IMAGE_ARGS)

# The main job: serve the shipped models over gRPC (:50051) and HTTP/JSON with the latent explorer (:8080), embedded
# TorchScript backend.
run: setup
	$(PY) -m service --http-port 8080

# Watch it here: the service under a little load, a real Prometheus scraping it (TRITON=1 adds a real
# tritonserver and serves through it), the URLs to open, and docs/images/dashboard.png drawn from the dashboard.
monitor: setup
	$(PY) scripts/monitor.py $(if $(TRITON),--triton)

# Reproduce the shipped MNIST model end to end (hours on 2 CPU cores).
model: train evaluate plots export

train: setup
	PYTHON=$(PY) scripts/train_default_model.sh $(RUN)

evaluate: setup
	$(PY) -m training evaluate --checkpoint $(RUN)/iwae/best.pt --k $(or $(K),5000) --out $(RUN)/evaluation.json

plots: setup
	$(PY) -m training plots --checkpoint $(RUN)/iwae/best.pt --out $(RUN)/plots \
	  --metrics $(RUN)/elbo/metrics.csv $(RUN)/iwae/metrics.csv

export: setup
	$(PY) -m training export --checkpoint $(RUN)/iwae/best.pt --repo deploy/model_repository --name mnist \
	  --evaluation $(RUN)/evaluation.json

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy training service vaecore tools benchmarks clients/python/vae_client
	cd proto && ../.tools/node_modules/.bin/buf lint

generate: setup
	$(PY) scripts/generate_proto.py

# After editing deploy/prometheus/rules/: regenerate the Kubernetes PrometheusRule that wraps them (a test checks it).
rules: setup
	$(PY) scripts/sync_prometheus_rule.py

# Wall-clock bounds (health p99 < 100 ms while each RPC's largest request runs): on an otherwise idle machine.
responsiveness: setup
	$(PY) -m pytest -m timing -s tests/service/test_responsiveness.py

# Every serving figure as a ratio to its limit, measured side by side (BENCHMARKS.md; a few minutes here).
# BENCH_ARGS: e.g. --no-triton, --workers 1 2, --seconds 5, --soak 300 (then only the soak, into soak.json).
# BENCH_NOTE: a line shown above the results (e.g. how quiet the machine was).
bench: setup
	$(PY) -m benchmarks.suite --out benchmarks/results $(BENCH_ARGS); status=$$?; \
	  $(PY) -m benchmarks.report benchmarks/results/bench.json --markdown BENCHMARKS.md --note "$(BENCH_NOTE)" \
	  && exit $$status

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache .mypy_cache
