# The request splitter: one statically linked binary and nothing else (no shell, no package manager,
# no libc), run as an unprivileged user. Built by `hack/images.sh request-splitter`, which puts the
# binary `outrigger-request-splitter` in the build context; by hand:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
#     -p outrigger-request-splitter
#
# FROM scratch is the default and the tested base; a distroless base works too:
#   --build-arg BASE=gcr.io/distroless/static-debian12:nonroot
# The splitter drains itself on SIGTERM (--drain-delay, --drain-timeout), so it needs no preStop helper.
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-request-splitter" \
      org.opencontainers.image.description="Outrigger request splitter: weighted, sticky, header-routed and mirrored HTTP splitting across versions" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-request-splitter /outrigger-request-splitter
USER 65534:65534
# Proxy (the configuration's `listen`, 0.0.0.0:8080 by default) and admin (/metrics, /healthz,
# /readyz, /config).
EXPOSE 8080 9901
ENTRYPOINT ["/outrigger-request-splitter"]
