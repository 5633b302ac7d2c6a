# Outrigger developer commands. `make up` and `make test` are the two in the README.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: up demo down test lint fmt test-unit test-cluster generate cluster-up cluster-down operator-up deps images install-manifest

## Bring the whole product up on the local cluster: the cluster, every image, the kubectl plugin,
## and the operator installed with the Helm chart; waits until sidecar injection works.
up:
	hack/up.sh

## A live canary experiment with in-cluster load: a bad version rolled back, a good one promoted.
demo:
	hack/demo.sh

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
	$(CARGO) build -p outrigger-operator -p outrigger-request-splitter -p kubectl-outrigger
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

## The operator as a process on this machine instead of in the cluster (for working on it).
operator-up:
	hack/images.sh testapp
	hack/operator.sh start
