#!/usr/bin/env bash
# Builds the container images from statically linked release binaries, `FROM scratch`.
# Usage: hack/images.sh [binary ...]   (default: every image under images/)
# Tag: outrigger/<binary without the outrigger- prefix>:${OUTRIGGER_IMAGE_TAG:-dev}
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${OUTRIGGER_IMAGE_TAG:-dev}
TARGET=x86_64-unknown-linux-gnu
images=("$@")
if ((${#images[@]} == 0)); then
  for file in images/*.Dockerfile; do images+=("$(basename "$file" .Dockerfile)"); done
fi
packages=()
for image in "${images[@]}"; do packages+=(-p "outrigger-$image"); done
# crt-static on the gnu target gives a fully static binary without a musl toolchain.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target "$TARGET" "${packages[@]}"
for image in "${images[@]}"; do
  context=$(mktemp -d)
  cp "target/$TARGET/release/outrigger-$image" "$context/"
  DOCKER_BUILDKIT=0 docker build -q -f "images/$image.Dockerfile" -t "outrigger/$image:$TAG" "$context" >/dev/null 2>&1 \
    || { DOCKER_BUILDKIT=0 docker build -f "images/$image.Dockerfile" -t "outrigger/$image:$TAG" "$context"; exit 1; }
  rm -rf "$context"
  echo "[images] outrigger/$image:$TAG $(docker image inspect -f '{{.Size}}' "outrigger/$image:$TAG") bytes" >&2
done
