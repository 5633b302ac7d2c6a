# The health adapter: one statically linked binary and nothing else (no shell, no package manager,
# no libc), run as an unprivileged user. Built by `hack/images.sh health-adapter`, which puts the
# binary `outrigger-health-adapter` in the build context; by hand:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
#     -p outrigger-health-adapter
#
# FROM scratch is the default and the tested base; a distroless base works too:
#   --build-arg BASE=gcr.io/distroless/static-debian12:nonroot
# It keeps nothing on disk, so the root filesystem can be read-only.
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-health-adapter" \
      org.opencontainers.image.description="Outrigger health adapter: TCP, HTTP, Redis and metric-threshold checks with hysteresis, served as /livez, /readyz and /startupz" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-health-adapter /outrigger-health-adapter
USER 65534:65534
# Admin (/metrics, /healthz, /readyz of the adapter itself) and the probe endpoints the app's
# probes use (/livez, /readyz, /startupz).
EXPOSE 9906 9926
ENTRYPOINT ["/outrigger-health-adapter"]
