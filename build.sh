#!/usr/bin/env bash
# Build the algorithm image of one HECKTOR 2025 task (see README, "Containers").
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: ./build.sh TASK [--flavour onnxruntime|torch] [--engine docker|podman] [--weights DIR]
                       [--host-ca FILE] [-- EXTRA BUILD ARGS...]

  TASK            1, 2 or 3: the task baked into the image's entry point (one image per task); or
                  "training": the training image (training/Dockerfile, tagged hecktor2025-training; no flavour,
                  no --weights: it carries model_weights/ for its ROI settings and Task 2/3 files).
  --flavour F     onnxruntime (default, for submission: ONNX Runtime + CUDA provider, no torch) or torch.
  --engine E      docker or podman (default: docker when its daemon answers, else podman).
  --weights DIR   model folder copied into the image (default model_weights); must lie inside this repository
                  (the build context), e.g. a generated folder under build/.
  --host-ca FILE  podman only: mount FILE into the build and point pip at it (PIP_CERT), for machines whose
                  HTTPS proxy has its own CA. Not needed on a normal host.
  -- ARGS         passed to `ENGINE build` as they are, e.g. `-- --pull=never --network host`.

The image is tagged hecktor2025-task<TASK>-<flavour>. Example for this project's development machines (Podman,
no Docker Hub, HTTPS through a proxy):
  ./build.sh 1 --engine podman --host-ca /etc/ssl/certs/ca-certificates.crt -- --pull=never --network host
EOF
  exit 2
}

repo="$(cd "$(dirname "$0")" && pwd)"
cd "$repo"

task="" flavour="onnxruntime" engine="" weights="model_weights" host_ca=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour) [ $# -ge 2 ] || usage; flavour="$2"; shift 2;;
    --engine) [ $# -ge 2 ] || usage; engine="$2"; shift 2;;
    --weights) [ $# -ge 2 ] || usage; weights="$2"; shift 2;;
    --host-ca) [ $# -ge 2 ] || usage; host_ca="$2"; shift 2;;
    --) shift; extra=("$@"); break;;
    -h|--help) usage;;
    -*) echo "build.sh: unknown option $1" >&2; usage;;
    *) [ -z "$task" ] || { echo "build.sh: one TASK only" >&2; usage; }; task="$1"; shift;;
  esac
done
case "$task" in 1|2|3|training) ;; *) echo "build.sh: TASK must be 1, 2, 3 or training, got '${task}'" >&2; usage;; esac
case "$flavour" in onnxruntime|torch) ;; *) echo "build.sh: --flavour must be onnxruntime or torch" >&2; usage;; esac

if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  else echo "build.sh: neither a running docker nor podman found (choose with --engine)" >&2; exit 2
  fi
fi
case "$engine" in docker|podman) ;; *) echo "build.sh: --engine must be docker or podman" >&2; usage;; esac
command -v "$engine" >/dev/null 2>&1 || { echo "build.sh: $engine is not installed" >&2; exit 2; }

if [ "$task" = training ]; then
  args=(--file training/Dockerfile --target image)
  tag="hecktor2025-training"
  what="training image"
else
  # The Dockerfile COPYs the model folder from the build context, so it must lie inside the repository.
  [ -f "$weights/manifest.json" ] || { echo "build.sh: $weights/manifest.json not found" >&2; exit 2; }
  weights_rel="$(realpath --relative-to="$repo" "$weights")"
  case "$weights_rel" in
    ..|../*) echo "build.sh: --weights must lie inside $repo (the build context), got $weights" >&2; exit 2;;
  esac
  args=(--file Dockerfile --build-arg "TASK=$task" --build-arg "FLAVOUR=$flavour"
        --build-arg "MODEL_WEIGHTS=$weights_rel" --target image)
  tag="hecktor2025-task${task}-${flavour}"
  what="flavour $flavour, models from $weights_rel"
fi
if [ -n "$host_ca" ]; then
  [ "$engine" = podman ] || { echo "build.sh: --host-ca needs podman (docker build has no --volume)" >&2; exit 2; }
  [ -r "$host_ca" ] || { echo "build.sh: --host-ca $host_ca is not readable" >&2; exit 2; }
  args+=(--volume "$(realpath "$host_ca"):/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
# Which commit the image was built from (the working tree may differ; read-only git query).
commit="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
args+=(--label "hecktor.source-commit=$commit")

echo "building $tag with $engine ($what)"
start=$(date +%s)
"$engine" build "${args[@]}" "${extra[@]}" --tag "$tag" .
elapsed=$(( $(date +%s) - start ))

size=$("$engine" image inspect --format '{{.Size}}' "$tag")
printf 'built %s in %dm%02ds; image size %s bytes (%.2f GB)\n' "$tag" $((elapsed / 60)) $((elapsed % 60)) \
  "$size" "$(echo "$size" | awk '{print $1 / 1e9}')"
if [ "$size" -ge 10000000000 ]; then
  echo "WARNING: $tag is over the platform's 10 GB image limit" >&2
fi
