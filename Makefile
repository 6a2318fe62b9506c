# Developer entry points. `make` (or `make help`) lists the targets.
#
# To add a target, declare it .PHONY and put a `## description` after its
# prerequisites; `make help` picks it up automatically:
#
#   .PHONY: demo
#   demo: build ## Run the demo scenario
#   	scripts/demo.sh

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo
# Where `make test-services-up` keeps its long-lived servers; `make test`
# uses its own per-run directory instead.
TEST_SERVICES_DIR ?= .dev/test-services

.PHONY: help
help: ## Show this list of targets
	@echo "Usage: make <target>"
	@echo
	@awk 'BEGIN { FS = ":[^#]*## " } \
		/^[a-zA-Z0-9_.-]+:[^=]*## / { printf "  %-20s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)

.PHONY: demo
demo: ## Run the embedded demo: SQLite, in-memory broker, simulated participants (ARGS=--keep …)
	scripts/install-deps.sh protoc
	$(CARGO) run --release --quiet -- demo $(ARGS)

.PHONY: test
test: lint-deploy ## Run all tests (both brokers) against private PostgreSQL, Redis and Pulsar
	scripts/test.sh

.PHONY: lint
lint: lint-deploy ## Check formatting, clippy (warnings as errors) and the deployment files
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: lint-deploy
lint-deploy: ## Check compose files (docker compose config), Dockerfile (hadolint), dashboards
	scripts/lint-deploy.sh

.PHONY: pulsar-up
pulsar-up: ## Start pulsar-lite + its compatibility proxy (state in .dev/pulsar-lite)
	scripts/pulsar-lite.sh start

.PHONY: pulsar-down
pulsar-down: ## Stop pulsar-lite and its proxy
	scripts/pulsar-lite.sh stop

.PHONY: fmt
fmt: ## Format all code with rustfmt
	$(CARGO) fmt --all

.PHONY: build
build: ## Build the release binary
	$(CARGO) build --release

.PHONY: run
run: ## Run the server (release build)
	$(CARGO) run --release -- serve

.PHONY: migrate
migrate: ## Apply database migrations (release build)
	$(CARGO) run --release -- migrate

.PHONY: test-services-up
test-services-up: ## Start PostgreSQL, Redis, Pulsar for tests (source .dev/test-services/env)
	TEST_SERVICES_DIR=$(TEST_SERVICES_DIR) scripts/test-services.sh start

.PHONY: test-services-down
test-services-down: ## Stop the servers started by test-services-up
	TEST_SERVICES_DIR=$(TEST_SERVICES_DIR) scripts/test-services.sh stop

.PHONY: clean
clean: ## Stop test services, remove build output and local state (.dev)
	TEST_SERVICES_DIR=$(TEST_SERVICES_DIR) scripts/test-services.sh stop
	$(CARGO) clean
	rm -rf .dev
