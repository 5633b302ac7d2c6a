# The sharding ambassador: one statically linked binary and nothing else (no shell, no package
# manager, no libc), run as an unprivileged user. Built by `hack/images.sh sharding-ambassador`,
# which puts the binary `outrigger-sharding-ambassador` in the build context; by hand:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
#     -p outrigger-sharding-ambassador
#
# FROM scratch is the default and the tested base; a distroless base works too:
#   --build-arg BASE=gcr.io/distroless/static-debian12:nonroot
# Injection adds it to client pods (annotation `outrigger.dev/sharded-service`); it watches the
# shard map's ConfigMap through the API server with the pod's ServiceAccount, and drains itself on
# SIGTERM (--drain-delay, --drain-timeout).
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-sharding-ambassador" \
      org.opencontainers.image.description="Outrigger sharding ambassador: a Redis proxy on loopback that sends every key to its shard on a twemproxy-compatible ketama ring" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-sharding-ambassador /outrigger-sharding-ambassador
USER 65534:65534
# Clients (127.0.0.1:6379 by default, --listen) and admin (/metrics, /healthz, /readyz, /config).
EXPOSE 9902
ENTRYPOINT ["/outrigger-sharding-ambassador"]
