#!/usr/bin/env bash
# Builds llama.cpp's own CLI tools (CPU, native, Release) from the PyPI sdist of llama-cpp-python,
# which vendors llama.cpp, into a cache outside the checkout, and next to them `llama-pace`
# (scripts/llama-pace.cpp, linked against the same build's static libraries: llama.cpp forwards
# timed on request, for `forward_cost --llama-pace`). Idempotent: an existing build is reused.
# Prints the bin directory on its last line.
#
#   scripts/llama-cpp.sh                # build (a long build on 2 cores: ~20-30 minutes)
#   LLAMA_CPP_DIR=/elsewhere scripts/llama-cpp.sh
#
# Needs Python 3 with pip and a C++ compiler; cmake and ninja come from pip in a private venv.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="${LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/specula/llama.cpp}"
BIN="$ROOT/build/bin"
TOOLS=(llama-bench llama-completion llama-speculative-simple llama-lookup)

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$ROOT/src/llama_cpp_python-$VERSION"

have_all() {
    for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || return 1; done
}
# llama-pace: one C++ file against the build's static libraries (seconds).
build_pace() {
    local inc="$SRC/vendor/llama.cpp" lib="$ROOT/build"
    if [ ! -x "$BIN/llama-pace" ] || [ "$HERE/llama-pace.cpp" -nt "$BIN/llama-pace" ]; then
        "${CXX:-c++}" -O2 -std=c++17 -I"$inc/include" -I"$inc/ggml/include" \
            "$HERE/llama-pace.cpp" "$lib/src/libllama.a" "$lib/ggml/src/libggml.a" \
            "$lib/ggml/src/libggml-cpu.a" "$lib/ggml/src/libggml-base.a" \
            -fopenmp -lpthread -o "$BIN/llama-pace" >&2
    fi
}
if have_all; then
    build_pace
    echo "llama.cpp tools already built" >&2
    echo "$BIN"
    exit 0
fi
mkdir -p "$ROOT"
if [ ! -x "$ROOT/venv/bin/cmake" ] || [ ! -x "$ROOT/venv/bin/ninja" ]; then
    python3 -m venv "$ROOT/venv"
    "$ROOT/venv/bin/pip" install --quiet cmake ninja
fi
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    mkdir -p "$ROOT/src"
    "$ROOT/venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$ROOT/src"
    tar -xzf "$ROOT/src/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT/src"
fi
export PATH="$ROOT/venv/bin:$PATH"
cmake -S "$SRC/vendor/llama.cpp" -B "$ROOT/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$ROOT/build" --target "${TOOLS[@]}" -j "$(nproc)" >&2
have_all || { echo "error: build finished without all of: ${TOOLS[*]}" >&2; exit 1; }
build_pace
echo "$BIN"
