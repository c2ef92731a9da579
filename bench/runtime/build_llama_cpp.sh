#!/usr/bin/env bash
# Builds llama-cpp-python from its PyPI source distribution once, for the `runtime` tests
# (tests/test_runtime_gguf.py): the wheel lands in ~/.cache/tunesmith/llama-cpp/ and is reused.
# A source build, not a prebuilt wheel: the proof is "the llama.cpp that ships with this sdist
# loads what tunesmith writes", and prebuilt wheels lag behind or are built for other CPUs.
# CMAKE_BUILD_PARALLEL_LEVEL=2 (override it) keeps the build polite on a shared machine.
set -euo pipefail
PY=${PY:-.venv/bin/python}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
CACHE=${TUNESMITH_LLAMA_CPP_CACHE:-$HOME/.cache/tunesmith/llama-cpp}
mkdir -p "$CACHE/sdist" "$CACHE/wheels"
if ls "$CACHE"/wheels/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "cached: $(ls "$CACHE"/wheels/llama_cpp_python-"$VERSION"-*.whl)"
else
  [ -f "$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz" ] || \
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$CACHE/sdist" "llama-cpp-python==$VERSION"
  start=$(date +%s)
  # LLAVA_BUILD=OFF: the multimodal library is not needed to load a text model.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
    "$PY" -m pip wheel -q --no-deps -w "$CACHE/wheels" "$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz"
  echo "built in $(( $(date +%s) - start )) s" | tee "$CACHE/wheels/build_seconds.txt"
fi
# Unpacked beside the wheel, not installed into the venv: the runtime tests put $CACHE/site on
# sys.path, so the default suite never sees llama_cpp. Its dependencies (numpy, jinja2,
# typing-extensions) are tunesmith's already, except diskcache (pure Python, imported on start-up).
rm -rf "$CACHE/site"
"$PY" -m pip install -q --no-deps --target "$CACHE/site" "$(ls "$CACHE"/wheels/llama_cpp_python-"$VERSION"-*.whl | head -1)" diskcache
echo "llama_cpp ready in $CACHE/site"
