#!/usr/bin/env bash
# Run the built image exactly as Grand Challenge does, on the bundled SYNTHETIC sample case.
# Usage: ./test.sh [1|2|3|all]
set -euo pipefail
cd "$(dirname "$0")"
TASKS="${1:-all}"
TAG="hecktor2025-task-${TASKS}"
INPUT="$(pwd)/test/sample-case"
OUTPUT="$(mktemp -d)"
SCRATCH="$(mktemp -d)"
chmod 777 "$OUTPUT" "$SCRATCH"
trap 'rm -rf "$SCRATCH"' EXIT

GPU_FLAGS="--gpus all"
docker info 2>/dev/null | grep -qi nvidia || { echo "no NVIDIA runtime: running on CPU"; GPU_FLAGS=""; }

docker run --rm --network none $GPU_FLAGS --shm-size 2g --memory 16g \
  -v "$INPUT":/input:ro -v "$OUTPUT":/output -v "$SCRATCH":/tmp "$TAG"

echo "outputs in $OUTPUT:"
find "$OUTPUT" -type f -printf '  %P (%s bytes)\n'
for f in rfs.json hpv-status.json; do [ -f "$OUTPUT/$f" ] && echo "  $f = $(cat "$OUTPUT/$f")"; done
