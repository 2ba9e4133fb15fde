# The user's entry points. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export FUNNEL_CACHE_DIR ?= $(CURDIR)/var/cache

.PHONY: demo test prometheus bench-observability test-fast lint images compose-test bench-compose eval bench profile layouts up down status stubs data clean

$(STAMP): constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e ".[test,lint]"
	touch $(STAMP)

data: $(STAMP)  ## fetch MovieLens 100K into the cache (from the recbole wheel on PyPI)
	$(PY) -m funnel.data.movielens --cache-dir $(FUNNEL_CACHE_DIR)

stubs: $(STAMP)  ## regenerate the committed gRPC stubs from protos/
	$(PY) scripts/run_codegen.py

demo: data  ## train on MovieLens 100K, publish, serve, recommend for user 42, stop
	$(PY) -m funnel.cli demo

test: data prometheus  ## unit, servicer, model and end-to-end tests
	$(PY) -m pytest -q -p no:cacheprovider

prometheus:  ## Debian's prometheus server, for the metrics tests (installed when missing; never started as a service)
	scripts/ensure-prometheus.sh

test-fast: data  ## unit and servicer tests without TensorFlow (property tests included): under a minute
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/servicer tests/deploy

lint: $(STAMP)  ## ruff (lint and format check) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

IMAGE ?= funnel:latest
PROMETHEUS_IMAGE ?= funnel-prometheus:latest
images:  ## the Funnel image and the compose stack's Prometheus, on a local debootstrap base when no registry answers
	docker/ensure-docker.sh
	PROMETHEUS_IMAGE=$(PROMETHEUS_IMAGE) docker/build-image.sh $(IMAGE)

compose-test: data  ## Docker set up, the image built, the compose stack scaled (retrieval=3, ranking=2) and rolled out
	FUNNEL_IMAGE=$(IMAGE) FUNNEL_PROMETHEUS_IMAGE=$(PROMETHEUS_IMAGE) docker/compose-test.sh

bench-compose: images  ## the compose stack: up time, and Recommend req/s with 1 and 3 retrieval replicas
	FUNNEL_IMAGE=$(IMAGE) $(PY) -m bench.compose

EXTRAS_STAMP := $(VENV)/.installed-extras
$(EXTRAS_STAMP): $(STAMP) constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e ".[test,lint,eval,bench]"
	touch $(EXTRAS_STAMP)

eval: data $(EXTRAS_STAMP)  ## recent and seeds splits: the trainer job as served vs tuned baselines (var/eval/)
	$(PY) -m trainer.eval --out var/eval

PEERS_STAMP := $(VENV)/.installed-peers
$(PEERS_STAMP): $(EXTRAS_STAMP)
	$(PY) -m pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e ".[test,lint,eval,bench,peers]"
	scripts/peer-venv-triton.sh
	touch $(PEERS_STAMP)

bench: data $(PEERS_STAMP)  ## 1M synthetic catalog + MovieLens 100K, pinned layout: echo floor, in-process TFRS, Funnel at 1/16/64, ANN recall; then Funnel, the three-hop pass-through floor, Ray Serve and PyTriton side by side
	$(PY) -m bench.run --items 1000000 --users 100000 --duration 20 --also movielens-100k --layout pinned --rounds 4 \
		--systems-rounds 4 --out var/bench

PROFILE_ROOT ?= var/artifacts
profile: data $(EXTRAS_STAMP)  ## py-spy each service under load at concurrency 16 (serves PROFILE_ROOT's stable release; make up trains one)
	$(PY) -m bench.profile --artifact-root $(PROFILE_ROOT) --out var/profile

METRICS := FUNNEL_METRICS_ADDRESS=127.0.0.1:0
TRACED := $(METRICS) OTEL_EXPORTER_OTLP_ENDPOINT=OTLP_SINK OTEL_EXPORTER_OTLP_INSECURE=true
bench-observability: data $(EXTRAS_STAMP)  ## metrics; metrics and every request traced (OTLP); and 1 in 10 traced; against none, side by side
	$(PY) -m bench.compare --artifact-root $(PROFILE_ROOT) --out var/bench-observability --rounds 8 \
		--variant off shared --variant metrics shared $(METRICS) --variant traced shared $(TRACED) \
		--variant sampled shared $(TRACED) OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1

layouts: data  ## the shared and pinned CPU layouts side by side, loads alternating (serves PROFILE_ROOT's stable release)
	$(PY) -m bench.compare --artifact-root $(PROFILE_ROOT) --out var/layouts

LAYOUT ?= shared
up: data  ## start the three services on 50051-50053 (trains a release first if there is none); LAYOUT=pinned gives the gateway a CPU of its own
	$(PY) -m funnel.cli up --layout $(LAYOUT)

down:
	$(PY) -m funnel.cli down

status:
	$(PY) -m funnel.cli status

clean:
	rm -rf var/artifacts var/log var/run
