# The operator: one statically linked binary and nothing else (no shell, no package manager, no libc),
# run as an unprivileged user; the chart adds a read-only root filesystem and drops every capability.
# Built by `hack/images.sh operator`, which puts the binary in the build context.
#
# FROM scratch is the default and the tested base. Users who prefer a distroless base (CA roots,
# /etc/passwd, tzdata; still no shell) build with
#   --build-arg BASE=gcr.io/distroless/static-debian12:nonroot
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-operator" \
      org.opencontainers.image.description="Outrigger operator: controllers and the sidecar-injection webhook" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-operator /outrigger-operator
# The preStop helper (images/delay.rs): waits while the replica's endpoint is removed.
COPY outrigger-delay /outrigger-delay
USER 65532:65532
# Admin (/metrics, /healthz, /readyz) and the HTTPS webhook.
EXPOSE 8080 9443
ENTRYPOINT ["/outrigger-operator"]
CMD ["run"]
