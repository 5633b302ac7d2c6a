# Test app for the cluster tests (and a stand-in sidecar): one static binary, nothing else.
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-testapp" \
      org.opencontainers.image.description="Outrigger test app: a tiny HTTP server and client" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-testapp /outrigger-testapp
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/outrigger-testapp"]
