# The metrics adapter: one statically linked binary and nothing else (no shell, no package manager,
# no libc), run as an unprivileged user. Built by `hack/images.sh metrics-adapter`, which puts the
# binary `outrigger-metrics-adapter` in the build context; by hand:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
#     -p outrigger-metrics-adapter
#
# FROM scratch is the default and the tested base; a distroless base works too:
#   --build-arg BASE=gcr.io/distroless/static-debian12:nonroot
# It keeps nothing on disk, so the root filesystem can be read-only.
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-metrics-adapter" \
      org.opencontainers.image.description="Outrigger metrics adapter: Redis, JSON, StatsD and Prometheus collectors on the pod's loopback, served as Prometheus text or OpenMetrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-metrics-adapter /outrigger-metrics-adapter
USER 65534:65534
# /metrics (collected and own metrics), /healthz, /readyz. StatsD, when its setting asks for it,
# listens on the pod's loopback only (127.0.0.1:9125 by convention) and needs no EXPOSE.
EXPOSE 9905
ENTRYPOINT ["/outrigger-metrics-adapter"]
