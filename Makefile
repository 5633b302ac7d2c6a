# Outrigger developer commands. `make up` and `make test` are the two in the README.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: up down test lint fmt test-unit test-cluster generate cluster-up cluster-down operator-up deps images install-manifest

## Bring up the local cluster with the CRDs installed and the operator running.
up: cluster-up operator-up

down:
	-hack/operator.sh stop
	hack/cluster.sh down

## Everything CI runs: formatting, lints, unit tests, then the cluster tests on a fresh cluster.
test: deps lint test-unit cluster-up test-cluster

deps:
	hack/deps.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-unit:
	$(CARGO) test --workspace --exclude outrigger-tests

test-cluster:
	$(CARGO) build -p outrigger-operator -p outrigger-request-splitter
	OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh
	$(CARGO) test -p outrigger-tests --no-fail-fast -- --test-threads=4

## Build every container image under images/ (static binaries, FROM scratch).
images:
	hack/images.sh

## Copy crds/ into the chart and regenerate manifests/install.yaml from it (default values).
install-manifest:
	cp crds/*.yaml charts/outrigger/crds/
	hack/install-manifest.sh >manifests/install.yaml

## Regenerate the CRDs under crds/ and the sidecar documents' schemas under contract/schemas/ from the Rust types.
generate:
	$(CARGO) run -q -p outrigger-operator -- crd --dir crds
	$(CARGO) run -q -p outrigger-contract --bin contract-schemas -- --dir contract/schemas
	$(MAKE) install-manifest

cluster-up:
	hack/cluster.sh up

cluster-down:
	hack/cluster.sh down

operator-up:
	hack/images.sh testapp
	hack/operator.sh start
