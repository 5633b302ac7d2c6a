#!/usr/bin/env bash
# Builds the container images from statically linked release binaries, `FROM scratch`.
# Usage: hack/images.sh [binary ...]   (default: every image under images/)
# Tags: outrigger/<binary without the outrigger- prefix>:${OUTRIGGER_IMAGE_TAG:-dev} and :<workspace
# version> (the chart's appVersion, so the chart's default values find the images built here).
# Binaries come from ${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${OUTRIGGER_IMAGE_TAG:-dev}
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-target}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
images=("$@")
if ((${#images[@]} == 0)); then
  for file in images/*.Dockerfile; do images+=("$(basename "$file" .Dockerfile)"); done
fi
packages=()
for image in "${images[@]}"; do
  [[ -f images/$image.Dockerfile ]] || { echo "[images] no images/$image.Dockerfile" >&2; exit 2; }
  packages+=(-p "outrigger-$image")
done
# crt-static on the gnu target gives a fully static binary without a musl toolchain.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target "$TARGET" "${packages[@]}"
# The preStop helper of images without a shell (images/delay.rs): one file, rustc alone.
delay=$TARGET_DIR/$TARGET/release/outrigger-delay
mkdir -p "$(dirname "$delay")"
rustc --edition 2021 -O -C panic=abort -C strip=symbols -C target-feature=+crt-static --target "$TARGET" \
  -o "$delay" images/delay.rs
for image in "${images[@]}"; do
  binary=$TARGET_DIR/$TARGET/release/outrigger-$image
  # A dynamically linked binary would not start on an empty base image.
  for file in "$binary" "$delay"; do
    if file "$file" 2>/dev/null | grep -q 'dynamically linked'; then
      echo "[images] $file is dynamically linked" >&2
      exit 1
    fi
  done
  context=$(mktemp -d)
  cp "$binary" "$context/"
  if grep -q outrigger-delay "images/$image.Dockerfile"; then cp "$delay" "$context/"; fi
  args=(-f "images/$image.Dockerfile" -t "outrigger/$image:$TAG" -t "outrigger/$image:$VERSION"
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" "$context")
  DOCKER_BUILDKIT=0 docker build -q "${args[@]}" >/dev/null 2>&1 \
    || { DOCKER_BUILDKIT=0 docker build "${args[@]}"; exit 1; }
  rm -rf "$context"
  echo "[images] outrigger/$image:$TAG (also :$VERSION) $(docker image inspect -f '{{.Size}}' "outrigger/$image:$TAG") bytes" >&2
done
