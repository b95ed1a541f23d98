#!/usr/bin/env bash
# Publish a built release directory to MinIO or any S3 store, for hosts without Python.
# Same layout and ordering rules as `invoke push`; see minio/README.md. Run with --help.
set -euo pipefail

readonly EX_OK=0 EX_INTERNAL=1 EX_USAGE=2 EX_NO_CLIENT=3 EX_LOCAL=4 EX_UNREACHABLE=5 EX_AUTH=6 \
  EX_NO_BUCKET=7 EX_UPLOAD=8 EX_EXISTS=9 EX_POINTER=10

usage() {
  cat <<'EOF'
Usage: push_to_minio.sh [options] [ARTIFACTS_DIR]

Uploads ARTIFACTS_DIR (default: dist/release_artifacts), which holds manifest.json and
whisper_<model>_xeon/ folders each with a SHA256SUMS, to
  s3://BUCKET/PREFIX/VERSION/whisper_<model>_xeon/<file>  and  s3://BUCKET/PREFIX/VERSION/manifest.json
Data files go first, then every SHA256SUMS, then manifest.json: a release is complete once its
manifest is listed. Each object carries its sha256 as metadata (x-amz-meta-sha256).
Last, s3://BUCKET/PREFIX/latest.json (what `whisper-release pull --release latest` gets) is
pointed at VERSION and read back, unless it names a newer version: runs of digits compare as
numbers (1.8.5-r2 < 1.8.5-r10 < 1.9.0), as with `invoke push`. A failed read of it is an error.

Options (each also read from the environment, shown in brackets):
  -e, --endpoint URL    S3 endpoint, http(s)://host[:port]   [AWS_ENDPOINT_URL, MINIO_ENDPOINT]
  -b, --bucket NAME     bucket          [WHISPER_RELEASE_BUCKET, MINIO_BUCKET; else release.toml]
  -p, --prefix PREFIX   key prefix      [WHISPER_RELEASE_PREFIX, MINIO_PREFIX; else release.toml]
  -v, --version VER     release version [WHISPER_RELEASE_VERSION; else release.toml]
  -c, --client KIND     auto (default), mc or aws
  -m, --mc PATH         MinIO's client to use, by path or command name   [MC_BIN]
  -r, --retries N       attempts per object before giving up (default 4; backoff 1, 2, 4... s)
  -f, --force           replace a published release whose manifest differs (objects the
                        tree does not have are deleted)
      --force-latest    point latest.json at VERSION even if it names a newer version, or
                        holds something that is not a pointer
  -n, --dry-run         check the local files and settings, print the plan, contact nothing
  -h, --help            this text

Credentials (environment only, never on the command line):
  AWS_ACCESS_KEY_ID or MINIO_ACCESS_KEY, AWS_SECRET_ACCESS_KEY or MINIO_SECRET_KEY,
  AWS_DEFAULT_REGION (default us-east-1). With neither key set, the aws cli's default chain
  (AWS_PROFILE, ~/.aws files, SSO, container or instance role) supplies them; MinIO's client
  needs the static keys.

Client: MinIO's client given by --mc/MC_BIN (used alone: no search, no fallback; ignored with
--client aws); else the first of mc, mcli, minio-client on PATH whose `--version` shows MinIO's
"commit-id=" (GNU Midnight Commander, also called mc, is refused); otherwise the aws cli.

Exit codes:
  0 published (or already published)     5 endpoint unreachable
  1 unexpected failure                   6 credentials rejected
  2 usage or setting error               7 bucket does not exist
  3 no usable client found               8 an upload failed after all retries
  4 local artifacts invalid              9 release exists with a different manifest (use --force)
  10 release published, but latest.json was not moved to it: it could not be read, written or
     read back (rerun), or it is not a pointer (--force-latest overwrites it)
EOF
}

# Userinfo of an http(s) URL (up to the last @: secrets may hold '/') never reaches the log, as in
# whisper_release.core.redact.
redact() { sed -E 's#(https?)://[^[:space:]'"'"'"]*@#\1://***@#g' <<<"$*"; }
log() { echo "push_to_minio: $(redact "$*")" >&2; }
die() { local code=$1; shift; log "error: $*"; exit "$code"; }

# ---- latest.json: the same bytes and order as src/whisper_release/publish/pointer.py ------------
# Both publishers must be able to move a pointer the other wrote, so each treats as valid only the
# exact bytes pointer_bytes() makes, and orders versions as version_key() does; tests/unit/
# test_pointer.py runs one table of cases through both.
readonly MAX_POINTER_BYTES=65536
pointer_json() {  # pointer_json VERSION SHA256: the pointer's bytes (json.dumps(..., indent=2) + "\n")
  printf '{\n  "version": "%s",\n  "manifest_sha256": "%s"\n}\n' "$1" "$2"
}
pointer_version() {  # pointer_version FILE: the version FILE names if it is a pointer as written, else fail
  local LC_ALL=C raw v sum
  local re=$'^\\{\n  "version": "([A-Za-z0-9][A-Za-z0-9._+-]*)",\n  "manifest_sha256": "([0-9a-f]{64})"\n\\}\n$'
  (($(stat -c %s -- "$1") <= MAX_POINTER_BYTES)) || return 1
  IFS= read -r -d '' raw <"$1" || true
  [[ "$raw" =~ $re ]] || return 1
  v="${BASH_REMATCH[1]}" sum="${BASH_REMATCH[2]}"
  # read stops at a NUL byte: only a byte comparison with the regenerated pointer is exact.
  cmp -s -- "$1" <(pointer_json "$v" "$sum") || return 1
  printf '%s\n' "$v"
}
version_cmp() {  # version_cmp A B: prints <, = or >, comparing as pointer.py's version_key does
  # Runs of digits compare as numbers (any length: by length without leading zeros, then digit by
  # digit) and above any non-digit run at the same place; other runs compare byte by byte; when
  # one version is a prefix of the other (in runs), the shorter comes first.
  LC_ALL=C awk '
    function runs(s, out,   n) {
      n = 0
      while (s != "") {
        if (!match(s, /^[0-9]+/)) match(s, /^[^0-9]+/)
        out[++n] = substr(s, 1, RLENGTH) ""; s = substr(s, RLENGTH + 1)
      }
      return n
    }
    function cmp_run(x, y,   dx, dy) {
      dx = (x ~ /^[0-9]/); dy = (y ~ /^[0-9]/)
      if (dx != dy) return dx ? 1 : -1
      if (dx) {
        sub(/^0+/, "", x); sub(/^0+/, "", y)
        if (length(x) != length(y)) return length(x) < length(y) ? -1 : 1
      }
      x = x ""; y = y ""
      return x < y ? -1 : (x > y ? 1 : 0)
    }
    BEGIN {
      na = runs(ARGV[1], a); nb = runs(ARGV[2], b); c = 0
      for (i = 1; c == 0 && i <= na && i <= nb; i++) c = cmp_run(a[i], b[i])
      if (c == 0 && na != nb) c = na < nb ? -1 : 1
      print (c < 0 ? "<" : (c > 0 ? ">" : "="))
      exit
    }' "$1" "$2"
}
# Sourced (tests/unit/publish/test_pointer.py): the functions above are all it needs.
(return 0 2>/dev/null) && return 0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pins="$here/../release.toml"
# pin SECTION KEY: the value of KEY = "..." inside [SECTION] of release.toml, if that file is here.
pin() {
  [[ -r "$pins" ]] || return 0
  awk -v sec="[$1]" -v key="$2" '
    /^\[/ { insec = ($0 == sec) }
    insec && $1 == key && $2 == "=" { v = $0; sub(/^[^=]*=[ \t]*"/, "", v); sub(/".*$/, "", v); print v; exit }
  ' "$pins"
}

endpoint="${AWS_ENDPOINT_URL:-${MINIO_ENDPOINT:-}}"
bucket="${WHISPER_RELEASE_BUCKET:-${MINIO_BUCKET:-}}"
prefix="${WHISPER_RELEASE_PREFIX-${MINIO_PREFIX-}}"
version="${WHISPER_RELEASE_VERSION:-}"
client_kind=auto
mc_bin="${MC_BIN:-}"
mc_bin_arg=0
retries=4
force=0
force_latest=0
dry_run=0
artifacts=""

while (($#)); do
  case "$1" in
    -h|--help) usage; exit $EX_OK ;;
    -e|--endpoint) endpoint="${2?--endpoint needs a value}"; shift 2 ;;
    -b|--bucket) bucket="${2?--bucket needs a value}"; shift 2 ;;
    -p|--prefix) prefix="${2?--prefix needs a value}"; shift 2 ;;
    -v|--version) version="${2?--version needs a value}"; shift 2 ;;
    -c|--client) client_kind="${2?--client needs a value}"; shift 2 ;;
    -m|--mc) mc_bin="${2?--mc needs a value}"; mc_bin_arg=1; shift 2 ;;
    -r|--retries) retries="${2?--retries needs a value}"; shift 2 ;;
    -f|--force) force=1; shift ;;
    --force-latest) force_latest=1; shift ;;
    -n|--dry-run) dry_run=1; shift ;;
    --) shift; artifacts="${1:-}"; break ;;
    -*) usage >&2; die $EX_USAGE "unknown option $1 (see --help)" ;;
    *) [[ -z "$artifacts" ]] || die $EX_USAGE "more than one artifacts directory given ($artifacts, $1)"
       artifacts="$1"; shift ;;
  esac
done
artifacts="${artifacts:-dist/release_artifacts}"
bucket="${bucket:-$(pin publish bucket)}"
[[ -n "${WHISPER_RELEASE_PREFIX+x}${MINIO_PREFIX+x}" ]] || prefix="${prefix:-$(pin publish prefix)}"
version="${version:-$(pin release version)}"
access_key="${AWS_ACCESS_KEY_ID:-${MINIO_ACCESS_KEY:-}}"
secret_key="${AWS_SECRET_ACCESS_KEY:-${MINIO_SECRET_KEY:-}}"
region="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"

# ---- settings ---------------------------------------------------------------------------------
[[ "$client_kind" =~ ^(auto|mc|aws)$ ]] || die $EX_USAGE "--client must be auto, mc or aws, got '$client_kind'"
if [[ -n "$mc_bin" ]]; then
  if [[ "$client_kind" == aws ]]; then
    # MC_BIN may be exported for other uses; only a contradiction on one command line is an error.
    ((mc_bin_arg)) && die $EX_USAGE "--mc and --client aws contradict each other; drop one"
    mc_bin=""
  else
    given="$mc_bin"
    [[ "$mc_bin" == */* ]] || mc_bin="$(command -v -- "$mc_bin" 2>/dev/null)" || mc_bin=""
    [[ -n "$mc_bin" && -f "$mc_bin" && -x "$mc_bin" ]] ||
      die $EX_USAGE "MinIO client '$given' (from --mc or MC_BIN) is not an executable file; give the path of MinIO's mc"
    unset given
  fi
fi
[[ "$retries" =~ ^[1-9][0-9]?$ ]] || die $EX_USAGE "--retries must be a number from 1 to 99, got '$retries'"
[[ -n "$endpoint" ]] || die $EX_USAGE "no endpoint: pass --endpoint http(s)://host:port or set AWS_ENDPOINT_URL"
if [[ "$endpoint" != *://* ]]; then
  # MinIO-style host:port; MINIO_SECURE=false means plain http.
  case "${MINIO_SECURE:-true}" in false|0|no|off) endpoint="http://$endpoint" ;; *) endpoint="https://$endpoint" ;; esac
fi
[[ "$endpoint" =~ ^(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:([0-9]{1,5}))?/?$ ]] ||
  die $EX_USAGE "endpoint '$endpoint' is not http(s)://host[:port] (no path, no credentials in the URL)"
scheme="${BASH_REMATCH[1]}"; host="${BASH_REMATCH[2]}"; port="${BASH_REMATCH[4]}"
[[ -n "$port" ]] || { [[ "$scheme" == https ]] && port=443 || port=80; }
endpoint="$scheme://$host:$port"
[[ -n "$bucket" ]] || die $EX_USAGE "no bucket: pass --bucket or set WHISPER_RELEASE_BUCKET/MINIO_BUCKET"
if [[ ! "$bucket" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ || "$bucket" == *..* ]]; then
  die $EX_USAGE "bucket '$bucket' breaks S3 naming rules (3-63 of a-z 0-9 . -, starting and ending alphanumeric)"
fi
prefix="${prefix#/}"; prefix="${prefix%/}"
if [[ -n "$prefix" && ! "$prefix" =~ ^[A-Za-z0-9._+=@-]+(/[A-Za-z0-9._+=@-]+)*$ || "/$prefix/" == */../* || "/$prefix/" == */./* ]]; then
  die $EX_USAGE "prefix '$prefix' is not '/'-separated names of letters, digits and ._+=@-"
fi
[[ "$version" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] ||
  die $EX_USAGE "version '$version' is not a single path segment (set --version or WHISPER_RELEASE_VERSION)"
chain=0
if [[ -z "$access_key" && -z "$secret_key" ]]; then
  chain=1  # the aws cli's default credential chain (profile, SSO, container or instance role)
  [[ "$client_kind" != mc ]] || die $EX_USAGE "--client mc needs static credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY/MINIO_SECRET_KEY), or use --client aws with a profile"
elif [[ -z "$access_key" || -z "$secret_key" ]]; then
  die $EX_USAGE "credentials incomplete: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY/MINIO_SECRET_KEY)"
fi
key_desc="credentials (access key ${access_key:0:4}…)" key_who="access key ${access_key:0:4}…"
if ((chain)); then
  key_desc="credentials of the aws cli's default chain${AWS_PROFILE:+ (profile $AWS_PROFILE)}"
  key_who="the aws cli's default-chain credentials${AWS_PROFILE:+ (profile $AWS_PROFILE)}"
fi
release_key="${prefix:+$prefix/}$version"

# ---- local artifacts --------------------------------------------------------------------------
[[ -d "$artifacts" ]] || die $EX_LOCAL "artifacts directory '$artifacts' does not exist (build first)"
artifacts="$(cd "$artifacts" && pwd)"
[[ -f "$artifacts/manifest.json" ]] || die $EX_LOCAL "$artifacts has no manifest.json: not a built release"
data_files=(); sums_files=(); n_dirs=0
while IFS= read -r -d '' dir; do
  rel_dir="${dir#"$artifacts"/}"
  [[ -f "$dir/SHA256SUMS" ]] || die $EX_LOCAL "$rel_dir/ has no SHA256SUMS"
  (cd "$dir" && sha256sum --check --quiet --strict SHA256SUMS >/dev/null 2>&1) ||
    die $EX_LOCAL "$rel_dir/SHA256SUMS does not match the files beside it (sha256sum -c fails); rebuild"
  while IFS= read -r -d '' f; do
    name="${f##*/}"
    [[ "$name" == SHA256SUMS ]] && continue
    [[ -L "$f" ]] && die $EX_LOCAL "$rel_dir/$name is a symlink; object stores keep none"
    awk -v n="$name" '{ sub(/^[0-9a-f]+ [ *]/, ""); if ($0 == n) found = 1 } END { exit !found }' "$dir/SHA256SUMS" ||
      die $EX_LOCAL "$rel_dir/$name is not listed in $rel_dir/SHA256SUMS"
    data_files+=("$rel_dir/$name")
  done < <(find "$dir" -mindepth 1 -maxdepth 1 \( -type f -o -type l \) -print0 | sort -z)
  [[ -z "$(find "$dir" -mindepth 1 -type d -print -quit)" ]] || die $EX_LOCAL "$rel_dir/ has subfolders; expected files only"
  sums_files+=("$rel_dir/SHA256SUMS"); n_dirs=$((n_dirs + 1))
done < <(find "$artifacts" -mindepth 1 -maxdepth 1 -type d -print0 | sort -z)
((n_dirs)) || die $EX_LOCAL "$artifacts holds no whisper_<model>_xeon/ folder"
while IFS= read -r -d '' f; do data_files+=("${f#"$artifacts"/}"); done \
  < <(find "$artifacts" -mindepth 1 -maxdepth 1 -type f ! -name manifest.json -print0 | sort -z)
plan=("${data_files[@]}" "${sums_files[@]}" manifest.json)

# manifest.json's subjects must name exactly these files with the hashes SHA256SUMS proved: pull
# trusts both, so a release where they disagree must not leave this machine. No jq or Python on
# such hosts: a small JSON scanner in awk reads the subject list (name, digest.sha256) per entry.
manifest_subjects() {  # name<TAB>sha256 per subject of the manifest given as $1
  awk '
    { text = text $0 "\n" }
    function value(s) {
      if (!(depth >= 3 && ctype[2] == "a" && (keyat[1] == "subject" || keyat[1] == "subjects"))) return
      if (depth == 3 && (keyat[3] == "name" || keyat[3] == "path")) name = s
      if (depth == 3 && keyat[3] == "sha256") sha = s
      if (depth == 4 && keyat[3] == "digest" && keyat[4] == "sha256") sha = s
    }
    END {
      n = length(text); depth = 0
      for (i = 1; i <= n; i++) {
        c = substr(text, i, 1)
        if (c == "\"") {
          s = ""
          for (i++; i <= n && (c = substr(text, i, 1)) != "\""; i++) {
            if (c == "\\") { i++; c = substr(text, i, 1) }
            s = s c
          }
          if (ctype[depth] == "o" && wantkey[depth]) { keyat[depth] = s; wantkey[depth] = 0 } else value(s)
        } else if (c == "{" || c == "[") {
          depth++; ctype[depth] = (c == "{") ? "o" : "a"; wantkey[depth] = 1; keyat[depth] = ""
          if (depth == 3 && ctype[2] == "a" && (keyat[1] == "subject" || keyat[1] == "subjects")) { name = ""; sha = "" }
        } else if (c == "}" || c == "]") {
          if (depth == 3 && ctype[2] == "a" && (keyat[1] == "subject" || keyat[1] == "subjects")) print name "\t" sha
          depth--
        } else if (c == ",") {
          if (ctype[depth] == "o") wantkey[depth] = 1
        }
      }
    }' "$1"
}
declare -A want_sha=()
for rel in "${sums_files[@]}"; do
  while read -r sum name; do want_sha["${rel%/SHA256SUMS}/${name#\*}"]="$sum"; done <"$artifacts/$rel"
  want_sha["$rel"]="$(sha256sum "$artifacts/$rel" | cut -d' ' -f1)"
done
for rel in "${data_files[@]}"; do
  [[ -n "${want_sha[$rel]:-}" ]] || want_sha["$rel"]="$(sha256sum "$artifacts/$rel" | cut -d' ' -f1)"
done
subjects="$(manifest_subjects "$artifacts/manifest.json")"
[[ -n "$subjects" ]] || die $EX_LOCAL "$artifacts/manifest.json has no 'subject' list of files and sha256 digests (pull refuses such a release); rebuild"
findings=()
declare -A listed=()
while IFS=$'\t' read -r name sum; do
  name="${name#./}"; listed["$name"]=1
  if [[ -z "${want_sha[$name]:-}" ]]; then findings+=("manifest.json lists $name, which is not in the tree")
  elif [[ "${sum,,}" != "${want_sha[$name]}" ]]; then
    findings+=("manifest.json gives $name sha256 ${sum:0:12}…, the tree's SHA256SUMS and file ${want_sha[$name]:0:12}…")
  fi
done <<<"$subjects"
for rel in "${data_files[@]}" "${sums_files[@]}"; do
  [[ -n "${listed[$rel]:-}" ]] || findings+=("$rel is in the tree but not among manifest.json's subjects")
done
if ((${#findings[@]})); then
  msg="$(printf '%s; ' "${findings[@]:0:5}")"
  die $EX_LOCAL "$artifacts/manifest.json and the SHA256SUMS files beside it disagree (${#findings[@]} finding(s): ${msg%; }); rebuild the artifacts, nothing was uploaded"
fi

if ((dry_run)); then
  log "dry run: would upload ${#plan[@]} objects to s3://$bucket/$release_key/ at $endpoint, in this order:"
  for rel in "${plan[@]}"; do echo "  $release_key/$rel  $(stat -c %s "$artifacts/$rel") bytes"; done
  log "then ${prefix:+$prefix/}latest.json -> $version, unless it names a newer version$( ((force_latest)) && echo ' (--force-latest: in any case)')"
  exit $EX_OK
fi

# ---- client -----------------------------------------------------------------------------------
is_minio_client() {  # is_minio_client PATH: MinIO's client, or log why PATH is refused
  local path="$1" out
  out="$(timeout 10 "$path" --version </dev/null 2>&1 | head -n 5)" || true
  grep -q 'commit-id=' <<<"$out" && return 0
  if grep -qi 'midnight commander' <<<"$out"; then
    log "refusing $path: it is GNU Midnight Commander, not MinIO's client"
  else
    log "refusing $path: its --version shows no MinIO commit-id"
  fi
  return 1
}
find_mc() {
  local name path
  for name in mc mcli minio-client; do
    path="$(command -v "$name" 2>/dev/null)" || continue
    if is_minio_client "$path"; then echo "$path"; return 0; fi
  done
  return 1
}
client="" kind=""
if [[ -n "$mc_bin" ]]; then
  # An explicit choice is honoured or refused, never silently replaced by another client.
  ((!chain)) || die $EX_USAGE "MinIO's client ($mc_bin, from --mc or MC_BIN) needs static credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use --client aws with a profile"
  is_minio_client "$mc_bin" ||
    die $EX_NO_CLIENT "$mc_bin (from --mc or MC_BIN) is not MinIO's client; give the path of MinIO's mc, or unset MC_BIN"
  client="$mc_bin" kind=mc
elif [[ "$client_kind" != aws ]] && ((!chain)) && client="$(find_mc)"; then
  kind=mc
elif [[ "$client_kind" != mc ]] && client="$(command -v aws 2>/dev/null)"; then
  # Whether this is really the aws cli is asked (aws --version) only if the first call fails:
  # every aws cli start costs about a second.
  kind=aws
else
  die $EX_NO_CLIENT "no usable client: install MinIO's client (minio/install-minio-client.sh) or the aws cli"
fi
log "client: $kind ($client)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [[ $kind == mc ]]; then
  urlencode() {  # percent-encode every byte outside the unreserved set
    local s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
      c="${s:i:1}"
      case "$c" in [A-Za-z0-9._~-]) out+="$c" ;; *) out+="$(printf '%%%02X' "'$c")" ;; esac
    done
    printf '%s' "$out"
  }
  # Credentials travel in the environment (MC_HOST_<alias>), never in argv; a private config dir
  # keeps the user's mc aliases untouched.
  mc_host="$scheme://$(urlencode "$access_key"):$(urlencode "$secret_key")@$host:$port"
  export MC_HOST_wrpush="$mc_host"
  unset mc_host
  mcx() { "$client" --config-dir "$tmp/mc" --no-color --quiet "$@"; }
  target="wrpush/$bucket"
else
  ((chain)) || export AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key"
  export AWS_DEFAULT_REGION="$region"
  # boto3 >= 1.36's default CRC checksums break several S3-compatible servers; our sha256 metadata
  # is the integrity proof instead.
  export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
  awsx() { "$client" --endpoint-url "$endpoint" "$@"; }
fi

# ---- checks before any upload -----------------------------------------------------------------
timeout 5 bash -c "exec 3<>/dev/tcp/${host//[\[\]]/}/$port" 2>/dev/null ||
  die $EX_UNREACHABLE "cannot connect to $host:$port; check the endpoint and that the server runs"

classify() {  # map a client's error text to an exit code and a sentence
  local err="$1"
  if grep -qiE 'InvalidAccessKeyId|SignatureDoesNotMatch|access key.*(not exist|does not exist)|signature.*(not match|does not match)|InvalidToken|\(403\)|Forbidden' <<<"$err"; then
    die $EX_AUTH "the store at $endpoint rejected the $key_desc; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
  elif grep -qiE 'NoSuchBucket|bucket.* does not exist|\(404\)|Not Found' <<<"$err"; then
    die $EX_NO_BUCKET "bucket '$bucket' does not exist at $endpoint; create it first (mc mb / aws s3 mb)"
  elif grep -qiE 'AccessDenied|Access Denied' <<<"$err"; then
    die $EX_AUTH "the store at $endpoint denied $key_who access to bucket '$bucket'"
  elif grep -qiE 'connect|connection|timed out|timeout|resolve' <<<"$err"; then
    die $EX_UNREACHABLE "cannot talk to $endpoint: $(tail -n1 <<<"$err")"
  fi
  die $EX_INTERNAL "checking bucket '$bucket' at $endpoint failed: $(tail -n1 <<<"$err")"
}
list_release() {  # Key<TAB>Size<TAB>ETag per object stored under the release (aws cli)
  awsx s3api list-objects-v2 --bucket "$bucket" --prefix "$release_key/" \
    --query 'Contents[].[Key,Size,ETag]' --output text
}
if [[ $kind == mc ]]; then
  err="$(mcx ls "$target/" 2>&1 >/dev/null)" || classify "$err"
  # The release's objects, one key (relative to the release) per line. Only "no such object" means
  # "nothing stored yet": any other failure must not pass for an empty release.
  if ! listing="$(mcx ls --recursive --json "$target/$release_key/" 2>"$tmp/err")"; then
    # With --json, mc may report the error on either stream.
    grep -qiE 'NoSuchKey|Object does not exist|key does not exist' <<<"$listing$(cat "$tmp/err")" ||
      die $EX_UNREACHABLE "listing $target/$release_key/ failed ($(tail -n1 <<<"$listing$(cat "$tmp/err")")); nothing was uploaded, rerun"
    listing=""
  fi
  remote_keys="$(sed -n 's/.*"key": *"\([^"]*\)".*/\1/p' <<<"$listing" | sed "s|^$release_key/||")"
else
  # One listing of the release checks endpoint, credentials and bucket, and shows whether a
  # manifest is already there (no separate probe).
  if ! listing="$(list_release 2>"$tmp/err")"; then
    [[ "$("$client" --version 2>&1)" == aws-cli/* ]] ||
      die $EX_NO_CLIENT "$client is not the aws cli (its --version does not start with aws-cli/)"
    classify "$(cat "$tmp/err")"
  fi
  remote_keys="$(awk -F'\t' -v p="$release_key/" 'NF >= 2 && index($1, p) == 1 { print substr($1, length(p) + 1) }' <<<"$listing")"
fi
log "endpoint, credentials and bucket OK: $endpoint, s3://$bucket"

# ---- an existing release ----------------------------------------------------------------------
# Objects stored under the release that the tree does not have: left by an older release or an
# interrupted push. pull must never meet them, so they go before the new objects do.
strays=()
while IFS= read -r key; do
  [[ -n "$key" ]] || continue
  in_plan=0
  for rel in "${plan[@]}"; do [[ "$rel" == "$key" ]] && { in_plan=1; break; }; done
  ((in_plan)) || strays+=("$key")
done <<<"$remote_keys"
delete_objects() {  # delete_objects KEY...: keys relative to the release, all or die
  local key
  if [[ $kind == mc ]]; then
    for key in "$@"; do
      mcx rm "$target/$release_key/$key" >/dev/null ||
        die $EX_UPLOAD "deleting $target/$release_key/$key failed; rerun (the release stays hidden)"
    done
    return
  fi
  local json="" failed
  for key in "$@"; do
    key="$release_key/$key"; key="${key//\\/\\\\}"; key="${key//\"/\\\"}"
    json+="${json:+,}{\"Key\":\"$key\"}"
  done
  printf '{"Objects":[%s],"Quiet":true}' "$json" >"$tmp/delete.json"
  # delete-objects exits 0 even when some keys were refused: its Errors list says which.
  failed="$(awsx s3api delete-objects --bucket "$bucket" --delete "file://$tmp/delete.json" \
    --query 'Errors[].Key' --output text)" ||
    die $EX_UPLOAD "deleting $# object(s) under s3://$bucket/$release_key/ failed; rerun (the release stays hidden)"
  [[ -z "$failed" || "$failed" == None ]] ||
    die $EX_UPLOAD "the store refused to delete $failed; rerun (the release stays hidden)"
}
remote_manifest="$tmp/remote-manifest.json"
if grep -qx 'manifest\.json' <<<"$remote_keys"; then
  # Listed means published: a failed download must not pass for "no release yet".
  if [[ $kind == mc ]]; then
    mcx cp "$target/$release_key/manifest.json" "$remote_manifest" >/dev/null 2>"$tmp/err"
  else
    awsx s3 cp --only-show-errors "s3://$bucket/$release_key/manifest.json" "$remote_manifest" >/dev/null 2>"$tmp/err"
  fi || die $EX_UNREACHABLE "s3://$bucket/$release_key/manifest.json is listed but could not be downloaded ($(tail -n1 "$tmp/err")); nothing was uploaded, rerun"
fi
published=0
if [[ -f "$remote_manifest" ]]; then
  if cmp -s "$remote_manifest" "$artifacts/manifest.json" && ((${#strays[@]} == 0)); then
    # Still set latest.json below: this completes a push cut off between manifest and pointer.
    log "release $version is already published at s3://$bucket/$release_key/ with this manifest: nothing to upload"
    published=1
  elif ! ((force)); then
    cmp -s "$remote_manifest" "$artifacts/manifest.json" &&
      die $EX_EXISTS "release $version at s3://$bucket/$release_key/ has this manifest but also ${#strays[@]} object(s) the tree does not have (${strays[0]}…); pass --force to delete them"
    die $EX_EXISTS "release $version already exists at s3://$bucket/$release_key/ with a different manifest; bump the version or pass --force"
  else
    log "--force: hiding the existing release (deleting its manifest) before replacing it"
    delete_objects manifest.json
  fi
fi
if ((${#strays[@]})); then
  log "deleting ${#strays[@]} object(s) under s3://$bucket/$release_key/ that the tree does not have: ${strays[*]:0:5}"
  delete_objects "${strays[@]}"
fi

# ---- upload -----------------------------------------------------------------------------------
upload_once() {  # upload_once REL SHA256 SIZE: one attempt, then check size (and metadata) stored
  local rel="$1" sum="$2" size="$3" key="$release_key/$1" got
  if [[ $kind == mc ]]; then
    mcx cp --attr "sha256=$sum" "$artifacts/$rel" "$target/$key" >/dev/null || return 1
    got="$(mcx stat --json "$target/$key" | grep -o '"size": *[0-9]*' | head -n1 | grep -o '[0-9]*$')" || return 1
    [[ "$got" == "$size" ]] || { log "stored size of $key is $got, expected $size"; return 1; }
  else
    # Sizes and MD5s are checked in one listing before the manifest goes up (each aws call costs a
    # second).
    awsx s3 cp --only-show-errors --no-progress --metadata "sha256=$sum" "$artifacts/$rel" "s3://$bucket/$key" || return 1
  fi
}
verify_listing() {  # every object but the manifest is stored with its local size (and MD5)
  [[ $kind == aws ]] || return 0
  local listing rel key k size etag md5 found got want
  listing="$(list_release)" || die $EX_UPLOAD "listing s3://$bucket/$release_key/ failed; release not published, rerun"
  for rel in "${plan[@]}"; do
    [[ "$rel" == manifest.json ]] && continue
    key="$release_key/$rel" found=0
    while IFS=$'\t' read -r k size etag; do
      [[ "$k" == "$key" ]] || continue
      found=1
      [[ "$size" == "$(stat -c %s "$artifacts/$rel")" ]] ||
        die $EX_UPLOAD "s3://$bucket/$key is stored with $size bytes, the file has $(stat -c %s "$artifacts/$rel"); release not published, rerun"
      etag="${etag//\"/}"
      # An unencrypted single-part upload's ETag is its MD5; a multipart ETag ("<md5 of part
      # md5s>-<parts>") depends on the part size, so it is left to size alone. Encrypted stores
      # (SSE-KMS, MinIO with KMS) give other ETags: a mismatch is settled by reading the object back.
      if [[ "$etag" =~ ^[0-9a-f]{32}$ ]]; then
        md5="$(md5sum "$artifacts/$rel" | cut -d' ' -f1)"
        if [[ "$etag" != "$md5" ]]; then
          want="$(sha256sum "$artifacts/$rel" | cut -d' ' -f1)"
          got="$(awsx s3 cp --only-show-errors "s3://$bucket/$key" - | sha256sum | cut -d' ' -f1)" || got=""
          [[ "$got" == "$want" ]] ||
            die $EX_UPLOAD "s3://$bucket/$key reads back with sha256 ${got:-(unreadable)}, the file has $want; release not published, rerun"
          log "s3://$bucket/$key: ETag is not its MD5 here (encrypted store?), read back and matched"
        fi
      fi
    done <<<"$listing"
    ((found)) || die $EX_UPLOAD "s3://$bucket/$key is missing after upload; release not published, rerun"
  done
}
total=${#plan[@]}; i=0
((published)) && plan=()
for rel in "${plan[@]}"; do
  i=$((i + 1))
  [[ "$rel" == manifest.json ]] && verify_listing
  size="$(stat -c %s "$artifacts/$rel")"
  sum="$(sha256sum "$artifacts/$rel" | cut -d' ' -f1)"
  attempt=1
  until upload_once "$rel" "$sum" "$size"; do
    if ((attempt >= retries)); then
      die $EX_UPLOAD "uploading $rel failed $attempt times; release $version is not published (no manifest written), rerun later"
    fi
    delay=$((1 << (attempt - 1)))
    log "[$i/$total] $rel: attempt $attempt failed, retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
  done
  echo "[$i/$total] uploaded $release_key/$rel ($size bytes, sha256 ${sum:0:16}…)"
done
((published)) || log "release $version published at s3://$bucket/$release_key/ ($total objects) via $kind"

# ---- latest.json ------------------------------------------------------------------------------
# Written only now that the manifest it names is up, so it never points at a release a reader
# cannot see; the rules are pointer.py's (see pointer_version and version_cmp at the top).
latest_key="${prefix:+$prefix/}latest.json"
where="s3://$bucket/$latest_key"
get_object() {  # get_object KEY FILE: download, errors on stderr
  if [[ $kind == mc ]]; then
    mcx cp "$target/$1" "$2" >/dev/null
  else
    awsx s3api get-object --bucket "$bucket" --key "$1" "$2" >/dev/null
  fi
}
mkdir "$tmp/cur" "$tmp/new" "$tmp/back"
# The file name gives mc the content type (by extension) that the aws cli is told explicitly.
current="$tmp/cur/latest.json" pointer="$tmp/new/latest.json" back="$tmp/back/latest.json"
if ! get_object "$latest_key" "$current" 2>"$tmp/err"; then
  # Only "no such key" means "no pointer yet": a store in trouble must not pass for an empty one.
  grep -qiE 'NoSuchKey|Object does not exist|key does not exist' "$tmp/err" ||
    die $EX_POINTER "release $version was published, but reading $where failed ($(tail -n1 "$tmp/err")); the latest-release pointer was left unchanged: rerun the push (it uploads nothing already there)"
  rm -f "$current"
fi
was=""
if [[ -f "$current" ]]; then
  was="$(pointer_version "$current")" || was=""
  if ! ((force_latest)); then
    [[ -n "$was" ]] ||
      die $EX_POINTER "release $version was published, but $where is not a valid pointer, so it was not replaced; pass --force-latest to overwrite it with this release"
    if [[ "$(version_cmp "$was" "$version")" == ">" ]]; then
      log "$where stays at $was, which is newer than $version (--force-latest moves it back)"
      exit $EX_OK
    fi
  fi
fi
pointer_json "$version" "$(sha256sum "$artifacts/manifest.json" | cut -d' ' -f1)" >"$pointer"
if [[ -f "$current" ]] && cmp -s "$current" "$pointer"; then
  log "$where already names $version"
  exit $EX_OK
fi
sum="$(sha256sum "$pointer" | cut -d' ' -f1)"
if [[ $kind == mc ]]; then
  mcx cp --attr "sha256=$sum" "$pointer" "$target/$latest_key" >/dev/null 2>"$tmp/err"
else
  awsx s3 cp --only-show-errors --no-progress --content-type application/json --metadata "sha256=$sum" \
    "$pointer" "s3://$bucket/$latest_key" 2>"$tmp/err"
fi && get_object "$latest_key" "$back" 2>"$tmp/err" ||
  die $EX_POINTER "release $version was published, but writing $where failed ($(tail -n1 "$tmp/err")); \`pull --release latest\` still gets the previous one: rerun the push (it uploads nothing already there)"
cmp -s "$back" "$pointer" ||
  die $EX_POINTER "release $version was published, but reading back $where gave other bytes than were written; rerun the push"
log "$where -> $version${was:+ (was $was)}"
