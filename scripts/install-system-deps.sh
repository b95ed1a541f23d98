#!/usr/bin/env bash
# Installs the Debian packages the pipeline and its tests need (root on Debian bookworm).
# Idempotent and quick when everything is present: apt-get runs only for what is missing.
set -euo pipefail

# One package per line: why it is needed.
packages=(
  debootstrap     # builder base image from Debian's packages (no registry to pull from)
  binutils        # objdump/readelf: ISA audit of shipped libraries
  gcc             # C probe of whisper.h struct sizes
  espeak-ng       # synthesised English clips for the WER set
  curl            # shell publisher and diagnostics
  ffmpeg          # the consumer decodes non-WAV audio with it (and its tests encode FLAC)
  openssl         # the embedded store makes its gRPC mTLS certificates with it
  mc              # GNU Midnight Commander, the real program push_to_minio.sh must refuse as "mc"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v docker >/dev/null || { echo "error: docker is not installed; this machine kind ships Docker Engine, install docker.io." >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "error: the Docker daemon is not reachable (docker info failed); start it (service docker start)." >&2; exit 1; }
