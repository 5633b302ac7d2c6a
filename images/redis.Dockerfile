# Redis for sharded services: Debian's `redis-server` and exactly the shared libraries it loads, on
# an empty base. No shell, no package manager, run as an unprivileged user; the root filesystem can
# be read-only, since Redis writes only to its data directory, /data (mount a volume there).
# Built by `hack/images.sh redis`, which copies the binary, its loader and its libraries (as `ldd`
# lists them) into rootfs/ of the build context.
# debian-binaries: redis-server:/usr/bin/redis-server
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-redis" \
      org.opencontainers.image.description="Redis (Debian's redis-server) on an empty base, for Outrigger's sharded services" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY rootfs/ /
# Empty, owned by the user Redis runs as, so a container without a volume can still save.
COPY --chown=999:999 data/ /data/
USER 999:999
VOLUME /data
WORKDIR /data
EXPOSE 6379
# Protected mode refuses clients from other pods when no password is set; the shards live on the
# pod network and AUTH, when wanted, is set with `--requirepass` (or a mounted config file).
ENTRYPOINT ["/usr/bin/redis-server"]
CMD ["--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", "--save", "", "--appendonly", "no"]
