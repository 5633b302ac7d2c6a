#!/usr/bin/env bash
# Builds the container images from statically linked release binaries, `FROM scratch`.
# Usage: hack/images.sh [binary ...]   (default: every image under images/)
# Tags: outrigger/<binary without the outrigger- prefix>:${OUTRIGGER_IMAGE_TAG:-dev} and :<workspace
# version> (the chart's appVersion, so the chart's default values find the images built here).
# Binaries come from ${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/<profile>, the Cargo profile
# being ${OUTRIGGER_IMAGE_PROFILE:-release} (the tests use `image-test`: no LTO, a much faster link).
# An image whose Dockerfile has a line `# debian-binaries: PACKAGE:/path[,PACKAGE:/path...]` (such as
# redis) is made of Debian's binaries instead: each listed binary, the dynamic loader and every
# shared library `ldd` lists go into rootfs/ of the build context, at their own paths, and the files
# under images/<image>/ (configuration) over them.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${OUTRIGGER_IMAGE_TAG:-dev}
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-target}
PROFILE=${OUTRIGGER_IMAGE_PROFILE:-release}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
images=("$@")
if ((${#images[@]} == 0)); then
  for file in images/*.Dockerfile; do images+=("$(basename "$file" .Dockerfile)"); done
fi
debian_binaries() { sed -n 's/^# debian-binaries: *//p' "images/$1.Dockerfile"; }
packages=()
for image in "${images[@]}"; do
  [[ -f images/$image.Dockerfile ]] || { echo "[images] no images/$image.Dockerfile" >&2; exit 2; }
  [[ -n $(debian_binaries "$image") ]] || packages+=(-p "outrigger-$image")
done
# Copies Debian binaries with their loader and libraries into DIR/rootfs, installing the packages
# that are missing.
debian_rootfs() {
  local image=$1 dir=$2 entry package path lib
  local -a entries
  IFS=',' read -ra entries <<<"$(debian_binaries "$image")"
  for entry in "${entries[@]}"; do
    package=${entry%%:*} path=${entry#*:}
    if [[ ! -e $path ]]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    fi
    mkdir -p "$dir/rootfs$(dirname "$path")"
    cp -L "$path" "$dir/rootfs$path"
    # `ldd` prints "name => /path (addr)" for libraries and "/path (addr)" for the loader.
    for lib in $(ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      mkdir -p "$dir/rootfs$(dirname "$lib")"
      cp -L "$lib" "$dir/rootfs$lib"
    done
  done
  # The loader is looked up at the path compiled into the binary (/lib64/...), a symlink on Debian.
  if [[ -e /lib64/ld-linux-x86-64.so.2 && ! -e $dir/rootfs/lib64/ld-linux-x86-64.so.2 ]]; then
    mkdir -p "$dir/rootfs/lib64"
    cp -L /lib64/ld-linux-x86-64.so.2 "$dir/rootfs/lib64/"
  fi
  if [[ -d images/$image ]]; then cp -R "images/$image/." "$dir/rootfs/"; fi
  # COPY gives everything to root; the Dockerfile copies data/ with --chown for the writable places.
  mkdir -p "$dir/data" "$dir/rootfs/tmp"
  chmod 1777 "$dir/rootfs/tmp"
}
# crt-static on the gnu target gives a fully static binary without a musl toolchain.
if ((${#packages[@]})); then
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile "$PROFILE" --target "$TARGET" "${packages[@]}"
fi
# The preStop helper of images without a shell (images/delay.rs): one file, rustc alone.
delay=$TARGET_DIR/$TARGET/release/outrigger-delay
mkdir -p "$(dirname "$delay")"
rustc --edition 2021 -O -C panic=abort -C strip=symbols -C target-feature=+crt-static --target "$TARGET" \
  -o "$delay" images/delay.rs
# Copies a static release binary (and the preStop helper, when the Dockerfile uses it) into DIR.
rust_context() {
  local image=$1 dir=$2 file
  local binary=$TARGET_DIR/$TARGET/$PROFILE/outrigger-$image
  # A dynamically linked binary would not start on an empty base image.
  for file in "$binary" "$delay"; do
    if file "$file" 2>/dev/null | grep -q 'dynamically linked'; then
      echo "[images] $file is dynamically linked" >&2
      exit 1
    fi
  done
  cp "$binary" "$dir/"
  if grep -q outrigger-delay "images/$image.Dockerfile"; then cp "$delay" "$dir/"; fi
}
for image in "${images[@]}"; do
  context=$(mktemp -d)
  if [[ -n $(debian_binaries "$image") ]]; then
    debian_rootfs "$image" "$context"
  else
    rust_context "$image" "$context"
  fi
  args=(-f "images/$image.Dockerfile" -t "outrigger/$image:$TAG" -t "outrigger/$image:$VERSION"
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" "$context")
  DOCKER_BUILDKIT=0 docker build -q "${args[@]}" >/dev/null 2>&1 \
    || { DOCKER_BUILDKIT=0 docker build "${args[@]}"; exit 1; }
  rm -rf "$context"
  echo "[images] outrigger/$image:$TAG (also :$VERSION) $(docker image inspect -f '{{.Size}}' "outrigger/$image:$TAG") bytes" >&2
done
