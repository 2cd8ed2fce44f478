#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf stubs under proto/fedprune/v1 (needs the dev extras).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-.venv/bin/python}" -m proto.generate "$@"
