#!/usr/bin/env bash
# build.sh OUT_DIR: assembles the release tree of the example bot with its
# Python dependencies vendored as wheels, ready for `slipway-pack build
# OUT_DIR`. Run in CI (or a test) before slipway-pack; nothing is fetched at
# install time, and in this demo nothing at build time either.
#
#   OUT_DIR/slipway.toml             this directory's (hooks: app/slipway_venv.py)
#   OUT_DIR/app/bot/                 the bot of examples/bot, settings.json requiring slipway_demo_dep
#   OUT_DIR/app/bin/venv-python      runs the release's own venv
#   OUT_DIR/app/slipway_venv.py      the check hook that makes the venv, offline
#   OUT_DIR/app/wheels/*.whl         the dependencies
#   OUT_DIR/app/wheels/requirements.txt   name==version --hash=sha256:... per wheel
#   OUT_DIR/schema/                  examples/bot's
#
# Environment: PYTHON (default python3, with pip); DEP_VERSION overrides the
# demo dependency's version (to show a dependency upgrade and its rollback);
# SOURCE_DATE_EPOCH fixes the wheel's timestamps (reproducible releases).
#
# A real app vendors its PyPI dependencies the same way, in CI:
#   pip download --only-binary=:all: --no-deps -r requirements.txt -d OUT_DIR/app/wheels
# and then writes requirements.txt with the hashes as below.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build.sh OUT_DIR}"
python="${PYTHON:-python3}"
if [[ -e "$out" ]] && [[ -n "$(ls -A "$out")" ]]; then
    echo "build.sh: $out exists and is not empty; give a new directory" >&2
    exit 2
fi

mkdir -p "$out/app/wheels"
cp -R "$here/../bot/app/bot" "$out/app/bot"
cp -R "$here/../bot/schema" "$out/schema"
find "$out" -name __pycache__ -prune -exec rm -rf {} +
cp "$here/slipway.toml" "$out/slipway.toml"
cp -R "$here/overlay/." "$out/"

# The dependency's wheel, built from the vendored source with the standard
# library backend beside it: pip looks at no index (--no-index).
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
cp -R "$here/vendor-src/slipway-demo-dep" "$src/"
if [[ -n "${DEP_VERSION:-}" ]]; then
    [[ "$DEP_VERSION" =~ ^[0-9]+(\.[0-9]+)*$ ]] || {
        echo "build.sh: DEP_VERSION ${DEP_VERSION@Q} is not a version like 2.0.0" >&2
        exit 2
    }
    sed -i "s/^__version__ = .*/__version__ = \"$DEP_VERSION\"/" \
        "$src/slipway-demo-dep/slipway_demo_dep/__init__.py"
fi
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}" \
    "$python" -m pip wheel --quiet --no-index --no-deps --disable-pip-version-check \
    --wheel-dir "$out/app/wheels" "$src/slipway-demo-dep"

# Pinned and hash-checked: the hook installs with --require-hashes.
(
    cd "$out/app/wheels"
    for wheel in *.whl; do
        name="${wheel%%-*}"
        rest="${wheel#*-}"
        version="${rest%%-*}"
        printf '%s==%s --hash=sha256:%s\n' "${name//_/-}" "$version" \
            "$(sha256sum "$wheel" | cut -d' ' -f1)"
    done
) >"$out/app/wheels/requirements.txt"
echo "build.sh: release tree in $out:"
cat "$out/app/wheels/requirements.txt"
