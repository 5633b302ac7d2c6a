# The log adapter: one statically linked binary and nothing else (no shell, no package manager, no
# libc), run as an unprivileged user. Built by `hack/images.sh log-adapter`, which puts the binary
# `outrigger-log-adapter` in the build context; by hand:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
#     -p outrigger-log-adapter
#
# FROM scratch is the default and the tested base; a distroless base works too:
#   --build-arg BASE=gcr.io/distroless/static-debian12:nonroot
# It reads the shared `outrigger-logs` volume at /var/log/outrigger (where it also keeps its
# checkpoints) and writes records to stdout, or to an HTTP endpoint (--sink-url). On SIGTERM it
# writes what it holds (--drain-timeout), so it needs no preStop helper.
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-log-adapter" \
      org.opencontainers.image.description="Outrigger log adapter: tails the app's log files, parses them (JSON, logfmt, nginx, klog, syslog, stack traces) and writes one JSON record per event" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-log-adapter /outrigger-log-adapter
USER 65534:65534
# Admin: /metrics, /healthz, /readyz.
EXPOSE 9904
ENTRYPOINT ["/outrigger-log-adapter"]
