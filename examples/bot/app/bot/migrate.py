"""The release's ``migrate`` hook: upgrade the persisted data's schema.

slipway runs it as ``python3 app/bot/migrate.py`` with cwd = the staged
release directory, while the old bot is quiesced, and with:

    SLIPWAY_SCHEMA_FROM   schema version of the data now (integer)
    SLIPWAY_SCHEMA_TO     schema version this release writes (integer)
    SLIPWAY_PERSISTENCE   the persistence directory

It applies one step per version, FROM+1 .. TO, to ``state.json``, then writes
TO into ``schema_version``. Both writes are atomic, and the schema_version
write comes last, so a run killed halfway is simply run again: the steps
are idempotent. ``meta/`` belongs to slipway and is never touched.

It is a standalone script (``bot`` is not importable from the release
directory), hence its own copy of atomic_write.
"""

import json
import os
import sys
from pathlib import Path


def fail(message):
    print(f"migrate: error: {message}", file=sys.stderr, flush=True)
    return 1


def atomic_write(path, data):
    """temp file + fsync + rename + fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def step(state, to_version):
    """Example transformation for reaching ``to_version``: stamp the schema.

    A real release would dispatch on ``to_version`` here (one function per
    migration, see schema/migrations/README.md).
    """
    state["schema"] = to_version
    return state


def env_int(name):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        raise ValueError(f"{name} is not set (this hook is meant to be run by slipway)")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer")


def main():
    try:
        source = env_int("SLIPWAY_SCHEMA_FROM")
        target = env_int("SLIPWAY_SCHEMA_TO")
    except ValueError as e:
        return fail(str(e))
    persistence = os.environ.get("SLIPWAY_PERSISTENCE")
    if not persistence:
        return fail("SLIPWAY_PERSISTENCE is not set (this hook is meant to be run by slipway)")
    persistence = Path(persistence)
    if not persistence.is_dir():
        return fail(f"persistence directory {persistence} does not exist")
    if target < source:
        return fail(f"refusing to downgrade data from schema {source} to {target}; "
                    "restore a snapshot taken with the older release instead")
    if target == source:
        print(f"migrate: data is already at schema {target}; nothing to do", flush=True)
        return 0

    version_file = persistence / "schema_version"
    try:
        current = int(version_file.read_text().strip())
    except FileNotFoundError:
        current = None  # fresh data: nothing written yet
    except (OSError, ValueError) as e:
        return fail(f"cannot read {version_file}: {e}")
    if current == target:
        # A previous run got as far as its last write: done.
        print(f"migrate: {persistence} is already at schema {target}; nothing to do", flush=True)
        return 0
    if current is not None and current != source:
        return fail(f"{version_file} says schema {current}, but slipway asked to migrate from {source}")

    state_file = persistence / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        state = None  # nothing saved yet: only the version needs writing
    except (OSError, ValueError) as e:
        return fail(f"cannot read {state_file}: {e}")
    if state is not None and not isinstance(state, dict):
        return fail(f"{state_file}: expected a JSON object")

    try:
        if state is not None:
            for version in range(source + 1, target + 1):
                state = step(state, version)
            atomic_write(state_file, json.dumps(state, indent=2, sort_keys=True).encode() + b"\n")
        atomic_write(version_file, f"{target}\n".encode())
    except OSError as e:
        return fail(f"cannot write to {persistence}: {e}")
    print(f"migrate: {persistence} migrated from schema {source} to {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
