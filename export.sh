#!/usr/bin/env bash
# Rebuild the image of one task and save it for upload: `save | gzip` as the organisers ask.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: ./export.sh TASK [--flavour onnxruntime|torch] [--engine docker|podman] [--weights DIR]
                        [--host-ca FILE] [-- EXTRA BUILD ARGS...]

Calls ./build.sh with the same arguments first (cached layers make an unchanged rebuild quick), so the archive
never holds a stale image, then writes hecktor2025-task<TASK>-<flavour>.tar.gz in the repository folder
(through a temporary name: a failed export leaves nothing behind) and prints its size. The platform's upload
limit is 2 GB for the archive and 10 GB for the image.
(The ONNX export of the networks is `python -m hecktor export-onnx`, not this script.)
EOF
  exit 2
}

repo="$(cd "$(dirname "$0")" && pwd)"
cd "$repo"

task="" flavour="onnxruntime" engine=""
for ((i = 1; i <= $#; i++)); do
  arg="${!i}"
  case "$arg" in
    --) break;;
    -h|--help) usage;;
    --flavour|--engine|--weights|--host-ca)
      j=$((i + 1)); [ "$j" -le $# ] || usage
      [ "$arg" = --flavour ] && flavour="${!j}"
      [ "$arg" = --engine ] && engine="${!j}"
      i=$j;;
    -*) echo "export.sh: unknown option $arg" >&2; usage;;
    *) [ -z "$task" ] || usage; task="$arg";;
  esac
done
case "$task" in 1|2|3) ;; *) echo "export.sh: TASK must be 1, 2 or 3, got '${task}'" >&2; usage;; esac
if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  else echo "export.sh: neither a running docker nor podman found (choose with --engine)" >&2; exit 2
  fi
  set -- "$@" --engine "$engine"
fi
# build.sh checks everything else (flavour, weights folder, options) and refuses what it does not know.
"$repo/build.sh" "$@"

tag="hecktor2025-task${task}-${flavour}"
archive="$repo/${tag}.tar.gz"
partial="$(mktemp "$repo/.${tag}.tar.gz.XXXXXX")"
trap 'rm -f "$partial"' EXIT
# Bash runs the EXIT trap on an interrupt only when the signal itself is trapped.
trap 'exit 130' INT
trap 'exit 143' TERM

save=("$engine" save)
# Podman's default is already docker-archive; say so, since that is the format the platform loads.
[ "$engine" = podman ] && save+=(--format docker-archive)
gzip_cmd=(gzip -c)
command -v pigz >/dev/null 2>&1 && gzip_cmd=(pigz -c)  # the same gzip format, on every core

echo "saving $tag to $archive"
start=$(date +%s)
"${save[@]}" "$tag" | "${gzip_cmd[@]}" > "$partial"
chmod 0644 "$partial"
mv -f "$partial" "$archive"
elapsed=$(( $(date +%s) - start ))

bytes=$(stat -c %s "$archive")
image_bytes=$("$engine" image inspect --format '{{.Size}}' "$tag")
printf 'wrote %s in %dm%02ds: %s bytes (%.2f GB); image %.2f GB\n' "$archive" $((elapsed / 60)) $((elapsed % 60)) \
  "$bytes" "$(echo "$bytes" | awk '{print $1 / 1e9}')" "$(echo "$image_bytes" | awk '{print $1 / 1e9}')"
if [ "$bytes" -gt 2000000000 ]; then
  echo "WARNING: the archive is over the platform's 2 GB upload limit" >&2
fi
