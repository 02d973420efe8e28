# EMR exchange platform. `make up` runs it locally; `make test` runs every check CI runs.
# Both install what they need first (scripts/bootstrap.sh), quickly when it is already there.
SHELL := /bin/bash
.DEFAULT_GOAL := help
EMR_BIN := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/emr-platform/bin
VENV := .venv/bin
BUF := $(EMR_BIN)/buf

.PHONY: help bootstrap up down test lint typecheck proto-lint proto-breaking protos protos-check unit integration fmt clean \
	images deploy-test kind-up kind-down dev deploy certs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

bootstrap: ## install Python packages (.venv), FerretDB, buf and grpcurl (idempotent)
	@bash scripts/bootstrap.sh

up: bootstrap ## start FerretDB and every service locally; Ctrl-C (or make down) stops them
	@$(VENV)/python -m emr_devstack

down: ## stop what `make up` started, and wait until it has stopped
	@if [ -x $(VENV)/python ]; then $(VENV)/python -m emr_devstack down; else echo "nothing to stop (no .venv)"; fi

test: bootstrap lint typecheck proto-lint proto-breaking protos-check unit integration deploy-test ## every check CI runs
	@echo "make test: all checks passed"

lint: bootstrap ## ruff lint and format check
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

typecheck: bootstrap ## mypy (strict) on our code; generated code excluded
	$(VENV)/mypy services tests bench

proto-lint: bootstrap ## buf lint (STANDARD + COMMENTS)
	cd protos && $(BUF) lint

proto-breaking: bootstrap ## buf breaking against the previous commit (skipped where there is none)
	@bash scripts/proto-breaking.sh

protos: bootstrap ## regenerate Python stubs from protos/ into services/contracts
	bash scripts/protos.sh

protos-check: bootstrap ## fail if the committed stubs differ from what protos/ generates
	bash scripts/protos.sh --check

unit: bootstrap ## unit tests of pure domain code (no I/O)
	$(VENV)/pytest services -q

integration: bootstrap ## cross-service tests against real processes and FerretDB
	$(VENV)/pytest tests -q --ignore=tests/deploy

fmt: bootstrap ## format and autofix
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

certs: bootstrap ## development CA and per-service mTLS certificates in .run/certs (CERTS_ARGS="--force ...")
	bash scripts/dev-certs.sh --out $${EMR_RUN_DIR:-.run}/certs $(CERTS_ARGS)

clean: ## remove local state of `make up` (.run)
	rm -rf .run

# --- Kubernetes delivery: images, the Helm chart, skaffold and kind (README "Deploy to Kubernetes") ---
SKAFFOLD_PROFILE ?= kind

images: bootstrap ## build every service image with podman from the local base image; prints sizes
	bash deploy/images/build.sh

deploy-test: bootstrap ## chart lint/render/validate, skaffold schema, images, podman kube play + smoke
	$(VENV)/pytest tests/deploy -q --durations=8

kind-up: ## create the kind cluster of deploy/kind/cluster.yaml (needs Docker; installs kind)
	bash deploy/kind/kind.sh up

kind-down: ## delete the kind cluster
	bash deploy/kind/kind.sh down

dev: ## skaffold dev on the kind cluster: build, load, deploy, port-forward, verify, watch
	skaffold dev -p $(SKAFFOLD_PROFILE) --port-forward

deploy: ## skaffold run once (SKAFFOLD_PROFILE=remote to push and deploy to a remote cluster)
	skaffold run -p $(SKAFFOLD_PROFILE)
