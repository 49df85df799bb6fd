#!/usr/bin/env bash
# Regenerate the vendored KServe v2 gRPC modules in edge_runtime/serving/grpc_proto/ from
# grpc_predict_v2.proto (see docs/grpc.md for the proto's origin and licence).
#
# grpcio-tools is pinned to 1.62.3 (protoc 25.1) on purpose: its output carries no protobuf
# runtime-version check and no grpcio-version check, so the same modules load with protobuf
# 4.25 (next to TensorFlow 2.19, which caps protobuf below 6) up to protobuf 6.x on a device.
# Newer grpcio-tools emit modules that refuse any protobuf older than the one they came with.
#
# The tools are installed into a throw-away virtual environment (or set GRPC_TOOLS_PYTHON to a
# Python that already has grpcio-tools 1.62.3). The generated files get a header that keeps
# ruff and mypy out of them.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_VERSION=1.62.3
OUT=edge_runtime/serving/grpc_proto
PROTO=$OUT/grpc_predict_v2.proto

py="${GRPC_TOOLS_PYTHON:-}"
tmp=""
if [ -z "$py" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install -q "grpcio-tools==$TOOLS_VERSION"
    py="$tmp/venv/bin/python"
fi
found="$("$py" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
if [ "$found" != "$TOOLS_VERSION" ]; then
    echo "gen-grpc: expected grpcio-tools $TOOLS_VERSION, found $found" >&2
    exit 1
fi

# -I . makes the generated service module import its messages by package path.
"$py" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. "$PROTO"

header='# Generated from grpc_predict_v2.proto by scripts/gen-grpc.sh (grpcio-tools '"$TOOLS_VERSION"'). Do not edit.
# ruff: noqa
# mypy: ignore-errors'
for f in "$OUT"/grpc_predict_v2_pb2.py "$OUT"/grpc_predict_v2_pb2_grpc.py "$OUT"/grpc_predict_v2_pb2.pyi; do
    { printf '%s\n' "$header"; cat "$f"; } >"$f.new"
    mv "$f.new" "$f"
done
echo "gen-grpc: wrote $OUT/grpc_predict_v2_pb2.py, grpc_predict_v2_pb2_grpc.py, grpc_predict_v2_pb2.pyi"
