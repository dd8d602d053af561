#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (one static binary, ~15 MB) from the llama.cpp source that the
# llama-cpp-python sdist on PyPI vendors, and cache it under the user's cache directory keyed by that
# version: only the first run on a machine pays the build (~10 minutes on 2 cores). Prints the
# binary's path on its last line. No internet is needed beyond PyPI: the web UI is not downloaded
# (LLAMA_USE_PREBUILT_UI=OFF), no curl/OpenSSL, and the binary runs on any x86-64 (GGML_NATIVE=OFF).
#
#   scripts/build-llama-server.sh            # build if not cached, print the path
#   LLAMA_SERVER_JOBS=4 scripts/build-llama-server.sh
set -euo pipefail

# The sdist and its hash are pinned here (like requirements.lock pins Python packages); its
# vendor/llama.cpp is llama.cpp commit 0c1e570.
version="0.3.36"
sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
python="${PYTHON:-python3}"
jobs="${LLAMA_SERVER_JOBS:-2}"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/llm-pool/llama-server-$version"
binary="$cache/llama-server"

if [[ -x "$binary" ]] && "$binary" --version >/dev/null 2>&1; then
  echo "llama-server: cached"
  echo "$binary"
  exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

echo "llama-server: downloading the llama-cpp-python $version sdist (hash-pinned)" >&2
printf 'llama-cpp-python==%s --hash=sha256:%s\n' "$version" "$sha256" >"$work/requirement.txt"
"$python" -m pip download --quiet --no-binary :all: --no-deps --require-hashes \
  -r "$work/requirement.txt" -d "$work" >&2
sdist="$work/llama_cpp_python-$version.tar.gz"
echo "$sha256  $sdist" | sha256sum --check --quiet -

tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"

echo "llama-server: building (cmake, -j$jobs); this takes about 10 minutes on 2 cores" >&2
cmake -S "$src" -B "$work/build" -G "Unix Makefiles" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF \
  -DLLAMA_CURL=OFF >"$work/configure.log" 2>&1 || { cat "$work/configure.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 \
  || { tail -50 "$work/build.log" >&2; exit 1; }

# Into place atomically: a concurrent run sees either no binary or a whole one.
install -m 0755 "$work/build/bin/llama-server" "$binary.tmp.$$"
mv -f "$binary.tmp.$$" "$binary"
"$binary" --version >&2 2>&1 || true
echo "llama-server: built in $((SECONDS - start)) s" >&2
echo "$binary"
