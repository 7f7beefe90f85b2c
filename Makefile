# citypop: `make run` starts everything, `make test` tests everything.
# Settings (environment): CITYPOP_ENGINE=elasticsearch|opensearch, CITYPOP_ENGINE_VERSION,
# CITYPOP_KAFKA_PORT, CITYPOP_ENGINE_PORT; see README.md for all of them.

SHELL := /bin/bash
STACK := deploy/local/stack.sh

.PHONY: help run test bench chaos lint lint-deploy build stack-up stack-down stack-status

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

run: ## Start Kafka, the engine, producer-api and indexer; Ctrl-C stops them all
	@deploy/local/run.sh

test: ## Lint, unit tests, and end-to-end tests against the real services (starts and stops the stack)
	@deploy/local/test.sh

bench: ## Benchmarks against the engine's ceilings (BENCH_ARGS="--events 100000 ..."); results in bench/results/
	@deploy/local/bench.sh

chaos: ## The chaos soak on a multi-node cluster: seeded faults under load, then end checks (CHAOS_DURATION=20m, CHAOS_SEED); report in bench/results/
	@deploy/local/chaos.sh

lint: ## cargo fmt --check, clippy with warnings as errors, cargo deny (advisories, licences, bans, sources)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	@deploy/supply-chain.sh

lint-deploy: ## Validate Dockerfile, docker-compose.yml, Helm chart (alert rules with promtool), examples and dashboard (no Docker or cluster needed)
	@deploy/lint.sh

build: ## Build the service binaries
	cargo build --workspace --bins --locked

stack-up: ## Start Kafka and the engine in the background (idempotent)
	@$(STACK) up

stack-down: ## Stop the stack's processes (data is kept under .stack/)
	@$(STACK) down

stack-status: ## Show what the stack runs
	@$(STACK) status
