#!/usr/bin/env bash
# Fill .gpukit/whl with the wheels of bench/gpu/kit.txt for the lent GPU machine, and record them in
# bench/gpu/kit.lock (file, bytes, sha256). Run here, where the package registry is reachable:
#
#   bash bench/gpu/build_kit.sh                         # cp312 wheels, for the lent machine's Python 3.12
#   KIT_PYTHON_VERSION=3.11 bash bench/gpu/build_kit.sh # the same set for a Python 3.11 rehearsal venv
#
# deepspeed has no wheel on PyPI: it is built here from its sdist with every op off (DS_BUILD_OPS=0), a
# pure-Python wheel; the build imports torch, so it runs with the project venv's Python (PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYV=${KIT_PYTHON_VERSION:-3.12}
KIT=${KIT_DIR:-.gpukit}
PY=${PYTHON:-.venv/bin/python}
WHL="$KIT/whl"
rm -rf "$WHL"
mkdir -p "$WHL"
pins=$(sed -e 's/#.*//' bench/gpu/kit.txt | awk 'NF {print $1}')
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL" $(grep -v '^deepspeed==' <<<"$pins")
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$WHL" \
    $(grep '^deepspeed==' <<<"$pins")
if [ "$PYV" = 3.12 ]; then  # the lock records the lent machine's kit; a rehearsal kit leaves it alone
    (cd "$WHL" && for f in *.whl; do printf '%s\t%s\t%s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-64)"; done) \
        > bench/gpu/kit.lock
fi
echo "build_kit: $(ls "$WHL" | wc -l) wheels, $(du -sh "$WHL" | cut -f1) in $WHL (Python $PYV)"
