# cvmfs-graphdriver: every target installs what it needs on a fresh Debian 12 machine with Node 20.
SHELL := /bin/bash
.DEFAULT_GOAL := build

# Build tools for the native addons (better-sqlite3, zstd-napi build from their bundled sources),
# tar/gzip/openssl/attr for tests, libfuse2 + fuse (fusermount) for the FUSE client,
# docker.io (20.10, dockerd) and busybox-static for the end-to-end tests, docker-registry (2.8) for the converter's;
# squid (the site cache), iproute2 (netns, veth, tbf) and gnuplot-nox (the chart) for bench/startup.
APT_PACKAGES := g++ make python3 tar gzip openssl coreutils libfuse2 fuse attr docker.io busybox-static docker-registry squid iproute2 gnuplot-nox

.PHONY: deps apt build test demo bench bench-ingest clean plugin fuzz

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

deps: apt node_modules/.package-lock.json

build: deps
	npx tsc -p tsconfig.json
	chmod +x dist/cvmfs/cli.js dist/docker2cvmfs/cli.js dist/publisher/cli.js

test: build
	npx tsc -p tsconfig.test.json
	bash scripts/run-tests.sh

demo: build
	bash scripts/demo.sh

# Container start-up from a remote site behind a wide-area link (bench/startup; ~25 min at the defaults).
bench: build
	node dist/bench/startup/main.js $(BENCH_ARGS)

bench-ingest: build
	node dist/bench/ingest.js $(BENCH_ARGS)

.PHONY: bench-publisher
bench-publisher: build
	node dist/bench/publisher.js $(BENCH_ARGS)

.PHONY: bench-convert
bench-convert: build
	node dist/bench/convert.js $(BENCH_ARGS)

# The FUSE client against issue 13's workloads and the physical limit of the same run (root, /dev/fuse).
.PHONY: bench-client
bench-client: build
	node dist/bench/client.js $(BENCH_ARGS)

clean:
	rm -rf dist .tap

# The managed plugin: build/plugin/{config.json,rootfs}, then `docker plugin create $(PLUGIN_NAME)`
# against the daemon of DOCKER_HOST (NO_CREATE=1 builds only).
PLUGIN_NAME ?= cvmfs
plugin: build
	PLUGIN_NAME=$(PLUGIN_NAME) bash scripts/build-plugin.sh

# Property-based hostile tars (test/fuzz) against ApplyDiff and the writer, with many more cases
# than the fixed-seed run of `make test`: FUZZ_RUNS cases (the slower writer and stream properties
# run a fixed fraction of them), under a fresh seed unless FUZZ_SEED is given. A failure prints
# fast-check's seed, path and shrunk counterexample; replay it with FUZZ_SEED=… FUZZ_PATH=….
FUZZ_RUNS ?= 2000
fuzz: deps
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "fuzz: FUZZ_SEED=$$seed FUZZ_RUNS=$(FUZZ_RUNS)"; \
	FUZZ_SEED=$$seed FUZZ_RUNS=$(FUZZ_RUNS) npx tap --timeout=0 --reporter=tap test/fuzz; status=$$?; \
	echo "fuzz: seed $$seed, $(FUZZ_RUNS) runs (re-run: make fuzz FUZZ_SEED=$$seed FUZZ_RUNS=$(FUZZ_RUNS))"; \
	exit $$status
