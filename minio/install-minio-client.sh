#!/usr/bin/env bash
# Fetch MinIO's client (Debian package `minio-client`, only in the suite named by release.toml's
# [publish] minio_client_suite) into a project-local tools folder, WITHOUT touching the system's
# apt sources or state: apt-get gets its own sources list, lists and cache dirs, downloads the
# .deb, and dpkg -x unpacks it. Idempotent: a present, working client is reused.
#
# Usage: minio/install-minio-client.sh [TOOLS_DIR]     (default: .cache/tools in the repository)
# Prints the client's path on stdout; everything else goes to stderr.
# Exit codes: 0 installed, 2 no mirror, 3 no apt/dpkg or keyring, 4 the package is there but
# unusable, 5 the suite's freshly fetched index has no minio-client package (a definitive answer,
# which the tests report as an expected failure), 6 the package lists could not be fetched.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${1:-${WHISPER_RELEASE_TOOLS:-$repo/.cache/tools}}"
bin="$tools/bin/minio-client"

log() { echo "install-minio-client: $*" >&2; }

# The pins file is the one place for suites and mirrors; read the two values it holds for us.
pin() {  # pin KEY DEFAULT: first `KEY = "value"` in release.toml
  local v
  v="$(sed -n "s/^$1[[:space:]]*=[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$repo/release.toml" | head -n1)"
  echo "${v:-$2}"
}
suite="$(pin minio_client_suite sid)"
mirror="${DEBIAN_MIRROR:-$(pin debian_mirror "")}"
[[ -n "$mirror" ]] || { log "error: no Debian mirror: set debian_mirror in release.toml or DEBIAN_MIRROR."; exit 2; }

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q 'commit-id='; then
  log "already installed: $("$bin" --version | head -n1)"
  echo "$bin"
  exit 0
fi

for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { log "error: $tool is not on PATH; this script needs a Debian-based host."; exit 3; }
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -r "$keyring" ]] || { log "error: $keyring is missing; install the debian-archive-keyring package."; exit 3; }

work="$tools/.apt-$suite"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$tools/bin"
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" >"$work/sources.list"
apt_opts=(
  -o "Dir::Etc::sourcelist=$work/sources.list"
  -o "Dir::Etc::sourceparts=/dev/null"
  -o "Dir::State::lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Sandbox::User=$(id -un)"
  -o "Debug::NoLocking=1"
  -o "Acquire::Languages=none"
)
log "updating the package lists of suite $suite (private lists in $work)"
# apt-get update only warns when an index cannot be fetched and keeps stale or no lists; an
# absent package would then look like a definitive "not in the suite". Error-Mode=any makes any
# failed fetch an error, and the index must be on disk before its answer counts.
if ! apt-get "${apt_opts[@]}" -o APT::Update::Error-Mode=any -qq update; then
  log "error: the package lists of suite $suite could not be fetched from $mirror (apt-get update failed, see above); check the network and the mirror."
  exit 6
fi
release_file="$(find "$work/lists" -maxdepth 1 -name "*_dists_${suite}_InRelease" -print -quit)"
packages_file="$(find "$work/lists" -maxdepth 1 -name "*_dists_${suite}_main_binary-*_Packages*" -print -quit)"
if [[ -z "$release_file" || -z "$packages_file" ]]; then
  log "error: apt-get update of suite $suite from $mirror left no InRelease or Packages index in $work/lists."
  exit 6
fi
index_date="$(sed -n 's/^Date: *//p' "$release_file" | head -n1)"
index_date="$(date -u -d "$index_date" +%F 2>/dev/null || echo "of unknown date")"
version="$(apt-cache "${apt_opts[@]}" policy minio-client | sed -n 's/^ *Candidate: *//p')"
if [[ -z "$version" || "$version" == "(none)" ]]; then
  # The test suite quotes this line as its expected-failure reason: keep it one sentence.
  log "error: Debian suite $suite at $mirror (package index dated $index_date) has no minio-client package."
  exit 5
fi
log "downloading minio-client $version"
( cd "$work/cache/archives" && apt-get "${apt_opts[@]}" -qq download "minio-client=$version" )
deb="$(find "$work/cache/archives" -maxdepth 1 -name "minio-client_${version//:/%3a}_*.deb" -print -quit)"
[[ -n "$deb" ]] || { log "error: apt-get download left no minio-client_${version}_*.deb in $work/cache/archives."; exit 4; }

# Unpack into a fresh folder, check it, then swap it in: never a half-installed client.
stage="$(mktemp -d "$tools/.minio-client.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
dpkg-deb -x "$deb" "$stage"
client="$(find "$stage" -type f -name minio-client -perm -u+x | head -n1)"
[[ -n "$client" ]] || { log "error: $deb holds no minio-client executable."; exit 4; }
"$client" --version | grep -q 'commit-id=' || { log "error: the unpacked client does not report a MinIO commit-id."; exit 4; }
rm -rf "$tools/minio-client"
mv "$stage" "$tools/minio-client"
trap - EXIT
ln -sfn "${client/#$stage/$tools/minio-client}" "$bin"
log "installed $("$bin" --version | head -n1)"
echo "$bin"
