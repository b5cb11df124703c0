"""The release's check hook: a virtualenv for this release, from the wheels
it carries, without network (the seed's open question 2).

slipway runs it in the staged release directory, before anything is
switched, with SLIPWAY_RELEASE_DIR set. The release tree is read-only, so
the venv lives beside the releases, one per release:

    <root>/releases/<version>-<id12>/      this release (read-only)
    <root>/venvs/<version>-<id12>/         its virtualenv (this hook)

1. If the venv exists and was made from the same requirements, check it
   imports and stop (a re-check, `slipway apply`, a reinstall).
2. Else create it under a temporary name, `pip install --no-index
   --find-links app/wheels --require-hashes -r app/wheels/requirements.txt`
   (pip never looks at an index: the wheels are all there is, and each must
   match its pinned sha256), import every module the bot requires, then
   rename it into place, so a killed hook never leaves a half venv under
   the final name.
3. Remove the venvs of releases that are gone (`slipway gc` removed them).

A failure exits 1 with the reason on stderr: slipway then leaves the
service untouched and puts the release on the bad list.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

MARKER = ".slipway-requirements.sha256"


def fail(message):
    print(f"slipway_venv: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(argv):
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        fail(f"{' '.join(argv)} failed ({result.returncode}): {' | '.join(tail)}")
    return result.stdout


def required_modules(release):
    settings = json.loads((release / "app" / "bot" / "settings.json").read_text())
    return settings.get("requires", [])


def check_imports(python, modules):
    code = "import importlib, json, sys; print(json.dumps({m: getattr(importlib.import_module(m), '__version__', None) for m in sys.argv[1:]}))"
    return json.loads(run([str(python), "-c", code, *modules]))


def main():
    release = Path(os.environ.get("SLIPWAY_RELEASE_DIR") or os.getcwd()).resolve()
    releases = release.parent
    venvs = Path(os.environ.get("SLIPWAY_VENVS_DIR") or releases.parent / "venvs")
    wheels = release / "app" / "wheels"
    requirements = wheels / "requirements.txt"
    if not requirements.is_file():
        fail(f"{requirements} is missing: build the release with examples/bot-wheels/build.sh")
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    modules = required_modules(release)
    target = venvs / release.name
    python = target / "bin" / "python"

    if (target / MARKER).is_file() and (target / MARKER).read_text().strip() == digest:
        versions = check_imports(python, modules)
        print(f"slipway_venv: {target} is ready: {versions}", flush=True)
        return

    venvs.mkdir(parents=True, exist_ok=True)
    tmp = venvs / f".tmp-{release.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        venv.EnvBuilder(with_pip=True, clear=True, symlinks=True).create(tmp)
        run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--no-index", "--find-links", str(wheels), "--require-hashes",
             "--no-cache-dir", "--disable-pip-version-check",
             "-r", str(requirements)])
        versions = check_imports(tmp / "bin" / "python", modules)
        (tmp / MARKER).write_text(digest + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"slipway_venv: created {target} from {wheels}: {versions}", flush=True)

    # The venvs of releases that no longer exist (collected by slipway gc).
    for entry in venvs.iterdir():
        name = entry.name
        gone = not name.startswith(".") and not (releases / name).exists()
        stale_tmp = name.startswith(".tmp-") and not name.endswith(f"-{os.getpid()}")
        if entry.is_dir() and (gone or stale_tmp):
            shutil.rmtree(entry, ignore_errors=True)
            print(f"slipway_venv: removed {entry}", flush=True)


if __name__ == "__main__":
    main()
