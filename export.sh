#!/usr/bin/env bash
# Save the image for upload to Grand Challenge. Usage: ./export.sh [1|2|3|all]
set -euo pipefail
cd "$(dirname "$0")"
TASKS="${1:-all}"
TAG="hecktor2025-task-${TASKS}"
docker save "$TAG" | gzip -c > "${TAG}.tar.gz"
ls -lh "${TAG}.tar.gz"
