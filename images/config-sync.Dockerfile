# The config sync sidecar: one statically linked binary and nothing else (no shell, no package
# manager, no libc), run as an unprivileged user. Built by `hack/images.sh config-sync`, which puts
# the binary `outrigger-config-sync` in the build context; by hand:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
#     -p outrigger-config-sync
#
# FROM scratch is the default and the tested base; a distroless base works too:
#   --build-arg BASE=gcr.io/distroless/static-debian12:nonroot
# Injection runs it as the user the settings name (`runAsUser`, `runAsGroup`), so the files it writes
# belong to that user; the image's default is 65534.
ARG BASE=scratch
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-config-sync" \
      org.opencontainers.image.description="Outrigger config sync: ConfigMaps and Secrets watched, validated, written atomically, the app reloaded and rolled back on failure" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY outrigger-config-sync /outrigger-config-sync
USER 65534:65534
# Admin (/metrics, /healthz, /readyz, /config); injection sets 9901 for config-sync.
EXPOSE 9901
ENTRYPOINT ["/outrigger-config-sync"]
