# Developer entry points. `make` (or `make help`) lists the targets.
#
# Each target is one line calling `cargo xtask …` (xtask/, the repository's
# tooling in Rust; see xtask/README.md) or cargo itself. To add a target,
# declare it .PHONY and put a `## description` after its prerequisites;
# `make help` picks it up automatically:
#
#   .PHONY: demo
#   demo: ## Run the demo scenario
#   	$(XTASK) demo $(ARGS)
#
# The stack targets (dev-up … clean) use Docker Compose where a Docker engine
# answers, local processes under .dev/dev-stack where none does (README,
# "Development stacks").

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo
XTASK := $(CARGO) xtask
# Where `make test-services-up` keeps its long-lived servers; `make test`
# uses its own per-run directory instead.
TEST_SERVICES_DIR ?= .dev/test-services

.PHONY: help
help: ## Show this list of targets
	@echo "Usage: make <target>   (ARGS=… passes options where a target says so)"
	@echo
	@awk 'BEGIN { FS = ":[^#]*## " } \
		/^[a-zA-Z0-9_.-]+:[^=]*## / { printf "  %-20s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)

# --- the two commands ----------------------------------------------------------

.PHONY: demo
demo: ## Run the embedded demo: SQLite, in-memory broker, simulated participants (ARGS=--keep …)
	$(XTASK) demo $(ARGS)

.PHONY: test
test: lint-deploy ## Run all tests (both brokers) against private PostgreSQL, Redis and Pulsar (ARGS=filter)
	$(XTASK) test $(ARGS)

# --- stacks: Docker Compose, or local processes without a Docker engine ---------

.PHONY: dev-up
dev-up: ## Start PostgreSQL :5432, Redis :6379, Pulsar :6650 for `make run` (compose, or local processes)
	$(XTASK) up dev

.PHONY: dev-down
dev-down: ## Stop the dev stack (locally: everything the *-up targets started; data kept)
	$(XTASK) down dev

.PHONY: simple-up
simple-up: ## PostgreSQL + Redis + simulators + orchestrator on Redis Streams (no Pulsar/Grafana)
	$(XTASK) up simple

.PHONY: simple-down
simple-down: ## Stop the simple stack
	$(XTASK) down simple

.PHONY: full-up
full-up: ## Everything: dev services + simulators + orchestrator on Pulsar (+ Prometheus, Grafana with Docker)
	$(XTASK) up full

.PHONY: full-down
full-down: ## Stop the full stack
	$(XTASK) down full

.PHONY: shared-up
shared-up: ## Orchestrator + PostgreSQL joining a shared Pulsar's Docker network (needs Docker; SHARED_SIMULATORS=1)
	$(XTASK) up shared

.PHONY: shared-down
shared-down: ## Stop the shared-Pulsar stack
	$(XTASK) down shared

.PHONY: status
status: ## Show each service of the stack(s): running or not, pid, address
	@$(XTASK) status

.PHONY: logs
logs: ## Follow the stack's logs (compose logs -f, or the local log files; ARGS="--no-follow orchestrator")
	@$(XTASK) logs $(ARGS)

# --- running it -------------------------------------------------------------------

.PHONY: run
run: ## Run the orchestrator (release build) with .env (made from .env.example if missing); log also in .dev/dev-stack
	$(XTASK) run $(ARGS)

.PHONY: monitor
monitor: ## Live view of the channels' events, grouped by saga (ARGS=…)
	$(XTASK) monitor $(ARGS)

.PHONY: bench
bench: ## Standard load test on the dev stack → .dev/bench/<time>-<broker>.json (BENCH_BROKER=pulsar|redis, BENCH_EVENTS, BENCH_MODE=closed|burst, BENCH_IN_FLIGHT)
	$(XTASK) bench

.PHONY: faults
faults: ## Fault scenarios at full size, release build, both brokers: kills, restarts, outages; a table of figures (ARGS=--broker redis|pulsar, a name filter; FAULTS_SEED)
	$(XTASK) faults $(ARGS)

.PHONY: soak
soak: ## A steady load with random kills and restarts for DURATION (default 10m): sagas done, RSS and connections over time, the verdict (ARGS=--broker …)
	$(XTASK) soak $(if $(DURATION),--duration $(DURATION)) $(ARGS)

.PHONY: migrate
migrate: ## Apply database migrations (release build)
	$(XTASK) migrate

# --- checks -------------------------------------------------------------------------

.PHONY: lint
lint: lint-deploy ## Check formatting, clippy (warnings as errors) and the deployment files
	$(XTASK) lint

.PHONY: lint-deploy
lint-deploy: ## Check compose files (docker compose config), Dockerfile (hadolint), dashboards
	$(XTASK) lint-deploy

.PHONY: fmt
fmt: ## Format all code with rustfmt
	$(CARGO) fmt --all

.PHONY: build
build: ## Build the release binary (installs protoc first if missing)
	$(XTASK) build

# --- servers for the tests ------------------------------------------------------

.PHONY: pulsar-up
pulsar-up: ## Start pulsar-lite + its compatibility proxy on free ports (state in .dev/pulsar-lite)
	$(XTASK) pulsar start

.PHONY: pulsar-down
pulsar-down: ## Stop pulsar-lite and its proxy
	$(XTASK) pulsar stop

.PHONY: test-services-up
test-services-up: ## Start PostgreSQL, Redis, Pulsar for tests (source .dev/test-services/env)
	$(XTASK) test-services up --dir $(TEST_SERVICES_DIR)

.PHONY: test-services-down
test-services-down: ## Stop the servers started by test-services-up
	$(XTASK) test-services down --dir $(TEST_SERVICES_DIR)

.PHONY: clean
clean: ## Stop the dev stack and test services, remove build output and local state (.dev)
	$(XTASK) clean
