#!/usr/bin/env bash
# Build the algorithm image. Usage: ./build.sh [1|2|3|all]  (default all)
set -euo pipefail
cd "$(dirname "$0")"
TASKS="${1:-all}"
case "$TASKS" in 1|2|3|all) ;; *) echo "usage: $0 [1|2|3|all]" >&2; exit 2;; esac
TAG="hecktor2025-task-${TASKS}"
docker build --build-arg TASKS="$TASKS" --tag "$TAG" .
echo "built $TAG"
