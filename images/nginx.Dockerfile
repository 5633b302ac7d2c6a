# nginx for the log adapter's tests and as a plain web server: Debian's `nginx` and exactly the
# shared libraries it loads, on an empty base, with the configuration in images/nginx/. No shell, no
# package manager, an unprivileged user; the root filesystem can be read-only: nginx writes its logs
# to the shared log volume (/var/log/outrigger, `nginx-access.log` and `nginx-error.log`, mounted by
# injection when the log adapter is asked for) and its pid and temporary files to /tmp (mount an
# emptyDir there).
# Built by `hack/images.sh nginx`, which copies the binary, its loader and its libraries (as `ldd`
# lists them) into rootfs/ of the build context, and images/nginx/ over them.
# debian-binaries: nginx:/usr/sbin/nginx
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outrigger-nginx" \
      org.opencontainers.image.description="nginx (Debian's) on an empty base, logging to Outrigger's shared log volume" \
      org.opencontainers.image.licenses="BSD-2-Clause" \
      org.opencontainers.image.vendor="Outrigger" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY rootfs/ /
USER 65534:65534
EXPOSE 8080
# `-e` names the error log nginx opens before it reads its configuration (the compiled-in one,
# /var/log/nginx/error.log, does not exist here).
ENTRYPOINT ["/usr/sbin/nginx", "-e", "/var/log/outrigger/nginx-error.log", "-c", "/etc/nginx/nginx.conf", "-g", "daemon off;"]
