"""Entry point: ``python3 -m bot`` (cwd = <release>/app).

A stand-in for a trading bot: a work loop that "trades" twice a second, a
small HTTP API (health, version, quiesce/resume, save) and a persistence
directory it saves to atomically. See ../../README.md for the full contract.
"""

import argparse
import errno
import json
import os
import queue
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from bot import DEFAULT_PORT

TICK_SECONDS = 0.5
AUTOSAVE_SECONDS = 10.0
DEV_VERSION = "0.0.0-dev"
SETTINGS_FILE = Path(__file__).resolve().with_name("settings.json")

_log_lock = threading.Lock()


class StartupError(Exception):
    """A problem that stops the bot before it serves (exit 1, message on stderr)."""


def log(event, **fields):
    """One line per event on stdout, flushed (journald reads it line by line)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    parts = [stamp, event]
    for key, value in fields.items():
        value = str(value)
        # Quote values with spaces so every line stays key=value parseable.
        parts.append(f"{key}={json.dumps(value) if (' ' in value or not value) else value}")
    with _log_lock:
        print(" ".join(parts), flush=True)


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def atomic_write(path, data):
    """Write bytes so readers see the old file or the new one, never a torn one.

    temp file in the same directory, fsync, rename over the target, then fsync
    the directory so the rename itself survives a power cut.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
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


# --------------------------------------------------------------------------
# Startup: options, settings, versions, persisted data
# --------------------------------------------------------------------------

def parse_args(argv):
    default_release = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(
        prog="python3 -m bot",
        description="Example trading bot released and installed by slipway.",
    )
    parser.add_argument(
        "--port", default=os.environ.get("BOT_PORT", str(DEFAULT_PORT)),
        help=f"HTTP port (env BOT_PORT, default {DEFAULT_PORT})",
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--persistence", metavar="DIR", type=Path, default=os.environ.get("BOT_PERSISTENCE"),
        help="persistence directory (env BOT_PERSISTENCE, required)",
    )
    parser.add_argument(
        "--release-dir", metavar="DIR", type=Path, default=default_release,
        help=f"release directory holding slipway/ and schema/ (default {default_release})",
    )
    args = parser.parse_args(argv)
    try:
        args.port = int(args.port)
        if not 0 <= args.port <= 65535:
            raise ValueError
    except ValueError:
        parser.error(f"invalid port {args.port!r} (from --port or BOT_PORT): expected 0-65535")
    if args.persistence is None or str(args.persistence) == "":
        parser.error("--persistence DIR (or env BOT_PERSISTENCE) is required")
    args.persistence = Path(args.persistence)
    return args


def load_settings():
    """Build-time knobs; the demo flips them to produce a deliberately bad release."""
    settings = {"fail_health": False, "crash_on_start": False}
    try:
        loaded = json.loads(SETTINGS_FILE.read_text())
    except FileNotFoundError:
        return settings
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot read settings {SETTINGS_FILE}: {e}")
    if not isinstance(loaded, dict):
        raise StartupError(f"settings {SETTINGS_FILE}: expected a JSON object")
    for key in settings:
        if key in loaded:
            if not isinstance(loaded[key], bool):
                raise StartupError(f"settings {SETTINGS_FILE}: {key!r} must be true or false")
            settings[key] = loaded[key]
    # Third-party modules the release needs (examples/bot-wheels): imported
    # at start-up, so a missing dependency fails the start, and reported
    # with their __version__ by /health.
    requires = loaded.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(m, str) for m in requires):
        raise StartupError(f"settings {SETTINGS_FILE}: 'requires' must be a list of module names")
    settings["requires"] = requires
    return settings


def import_required(names):
    """Imports each required module; returns {name: __version__}."""
    import importlib
    versions = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise StartupError(
                f"required module {name!r} is not installed for {sys.executable}: {e}; "
                "run the bot with the release's virtualenv (see examples/bot-wheels)")
        versions[name] = getattr(module, "__version__", None)
    return versions


def load_manifest(release_dir):
    """slipway writes <release>/slipway/manifest.json; a source checkout has none."""
    path = release_dir / "slipway" / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot read release manifest {path}: {e}")
    if not isinstance(manifest, dict):
        raise StartupError(f"release manifest {path}: expected a JSON object")
    return manifest


def read_int_file(path, what):
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StartupError(f"cannot read {what} {path}: {e}")
    try:
        return int(text)
    except ValueError:
        raise StartupError(f"{what} {path}: expected an integer, found {text!r}")


def check_data_schema(persistence, code_schema, min_compatible):
    """Return the data's schema version (None when new) or refuse incompatible data."""
    path = persistence / "schema_version"
    data_schema = read_int_file(path, "data schema version")
    if data_schema is None:
        return None
    if data_schema > code_schema:
        # Newer data than this code understands: e.g. a flip back to an old
        # release without restoring the snapshot. Never guess; refuse to run.
        raise StartupError(
            f"data schema {data_schema} in {path} is newer than this release can read "
            f"(schema {code_schema}); install a newer release or restore a matching snapshot"
        )
    if min_compatible is not None and data_schema < min_compatible:
        raise StartupError(
            f"data schema {data_schema} in {path} is older than this release can read "
            f"(oldest {min_compatible}); run the release's migrate hook first"
        )
    return data_schema


def load_state(persistence):
    path = persistence / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {"trades": 0, "last_tick": None}
    except (OSError, ValueError) as e:
        # Refuse rather than start from zero and overwrite the user's data.
        raise StartupError(f"cannot read state {path}: {e}; restore it from a snapshot")
    if not isinstance(state, dict) or not isinstance(state.get("trades", 0), int):
        raise StartupError(f"state {path}: expected an object with an integer 'trades'")
    state.setdefault("trades", 0)
    state.setdefault("last_tick", None)
    return state


# --------------------------------------------------------------------------
# The bot: work loop, pause/resume, persistence
# --------------------------------------------------------------------------

class Bot:
    def __init__(self, persistence, version, state, fail_health, modules=None):
        self.persistence = persistence
        self.version = version
        self.fail_health = fail_health
        self.modules = modules or {}
        self.ticks = 0  # ticks done by this process
        self._state = state  # persisted fields; unknown ones (e.g. from migrations) are kept
        # Held for one tick or one save. Flipping `_paused` under it is what
        # makes quiesce wait for an in-flight tick to finish.
        self._lock = threading.Lock()
        self._paused = False
        self._stop = threading.Event()
        self._last_save = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="work-loop", daemon=True)

    @property
    def paused(self):
        return self._paused

    @property
    def trades(self):
        return self._state["trades"]

    @property
    def marker(self):
        return self.persistence / "paused"

    def start(self):
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(TICK_SECONDS):
            with self._lock:
                if self._paused:
                    continue
                self.ticks += 1
                self._state["trades"] += 1
                self._state["last_tick"] = now_iso()
                if time.monotonic() - self._last_save >= AUTOSAVE_SECONDS:
                    self._save_locked("autosave")

    def _save_locked(self, reason):
        self._state["saved_at"] = now_iso()
        self._state["written_by"] = self.version
        data = json.dumps(self._state, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.persistence / "state.json", data)
        self._last_save = time.monotonic()
        log("saved", reason=reason, trades=self._state["trades"])

    def save(self, reason):
        """Persist now. Returns False when skipped because the bot is paused.

        While paused the state on disk is already current (quiesce saved it
        and nothing has ticked since), and slipway may be running the migrate
        hook on it: rewriting it from memory would undo the migration.
        """
        with self._lock:
            if self._paused:
                log("save-skipped", reason=reason, why="paused; state persisted at quiesce")
                return False
            self._save_locked(reason)
            return True

    def pause(self, source):
        """Quiesce: stop ticking, persist, then drop the acknowledgement marker."""
        with self._lock:  # waits for the current tick to finish
            if self._paused:
                return
            self._paused = True
            try:
                self._save_locked(f"quiesce ({source})")
                # Marker last: whoever polls for it knows the save is done.
                atomic_write(self.marker, f"{os.getpid()}\n".encode())
            except OSError:
                self._paused = False  # no acknowledgement without a save
                self.marker.unlink(missing_ok=True)
                raise
        log("paused", source=source, trades=self.trades)

    def start_paused(self, source):
        """Probation: start without trading, until slipway resumes us.

        Nothing is saved: no tick has run, so the state on disk is current.
        """
        with self._lock:
            self._paused = True
        log("paused", source=source, trades=self.trades)

    def resume(self, source):
        with self._lock:
            if not self._paused:
                return
            # Unpaused first: once the marker (the resume's acknowledgement)
            # is gone, /health must already say so.
            self._paused = False
            self.marker.unlink(missing_ok=True)
        log("resumed", source=source)

    def stop(self):
        """Stop ticking and persist (unless paused: see save()). Returns success."""
        self._stop.set()
        self._thread.join()
        ok = True
        try:
            self.save("shutdown")
        except OSError as e:
            log("save-failed", reason="shutdown", error=e)
            ok = False
        # A marker left behind would claim a dead process is paused.
        self.marker.unlink(missing_ok=True)
        return ok


# --------------------------------------------------------------------------
# HTTP API
# --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    server_version = "bot"

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        # Health is polled constantly; admin actions log their own events.
        pass

    def _route(self, method):
        bot = self.server.bot
        path = urlsplit(self.path).path
        if method == "POST":
            # Drain any body so the client does not see a reset.
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
        routes = {
            "/health": ("GET", self._health),
            "/version": ("GET", lambda: self._reply(200, {"version": bot.version})),
            "/admin/quiesce": ("POST", self._quiesce),
            "/admin/resume": ("POST", self._resume),
            "/admin/save": ("POST", self._save),
        }
        if path not in routes:
            return self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path}"})
        allowed, action = routes[path]
        if method != allowed:
            return self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"use {allowed} {path}"})
        try:
            action()
        except OSError as e:
            log("request-failed", path=path, error=e)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(e)})

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _health(self):
        bot = self.server.bot
        failing = bot.fail_health
        body = {
            "status": "failing" if failing else "ok",
            "version": bot.version,
            "paused": bot.paused,
            "ticks": bot.ticks,
            "trades": bot.trades,
        }
        if bot.modules:
            body["modules"] = bot.modules
        self._reply(503 if failing else 200, body)

    def _quiesce(self):
        self.server.bot.pause("http")
        self._reply(200, {"paused": True, "acknowledged": True})

    def _resume(self):
        self.server.bot.resume("http")
        self._reply(200, {"paused": False})

    def _save(self):
        wrote = self.server.bot.save("request")
        # While paused the file on disk is already current: say so.
        self._reply(200, {"saved": True} if wrote else {"saved": True, "unchanged": True})


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def on_probation(persistence, version):
    """True when slipway's meta/probation.json names this version."""
    try:
        with open(persistence / "meta" / "probation.json", encoding="utf-8") as f:
            probation = json.load(f)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as e:
        # Unreadable: the safe side is not to trade until resumed.
        log("probation-unreadable", error=e)
        return True
    return isinstance(probation, dict) and probation.get("version") == version


def prepare(args):
    """Everything that can fail before the bot serves. Returns (bot, server)."""
    settings = load_settings()
    if settings["crash_on_start"]:
        # Simulates a release that crash-loops under systemd.
        raise StartupError(f"crash_on_start is set in {SETTINGS_FILE}; exiting on purpose")
    modules = import_required(settings["requires"])

    release_dir = args.release_dir.resolve()
    manifest = load_manifest(release_dir)
    version = manifest.get("version") or DEV_VERSION
    schema_file = release_dir / "schema" / "VERSION"
    code_schema = read_int_file(schema_file, "release schema version")
    if code_schema is None:
        raise StartupError(f"missing {schema_file}; is --release-dir {release_dir} a release?")
    min_compatible = manifest.get("schema_min_compatible")

    persistence = args.persistence.resolve()
    try:
        persistence.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create persistence directory {persistence}: {e}")
    data_schema = check_data_schema(persistence, code_schema, min_compatible)
    state = load_state(persistence)

    # Bind before writing anything, so a second copy started by mistake
    # leaves the data alone.
    try:
        server = ThreadingHTTPServer((args.bind, args.port), Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {args.port} on {args.bind} is already in use (another bot running?); "
                "stop it or choose another --port / BOT_PORT"
            )
        raise StartupError(f"cannot listen on {args.bind}:{args.port}: {e}")
    server.daemon_threads = True

    try:
        if data_schema is None:
            atomic_write(persistence / "schema_version", f"{code_schema}\n".encode())
            data_schema = code_schema
        stale = persistence / "paused"
        if stale.exists():
            log("stale-pause-marker-removed", content=stale.read_text().strip())
            stale.unlink()
    except OSError as e:
        server.server_close()
        raise StartupError(f"cannot write to persistence directory {persistence}: {e}")

    server.bot = Bot(persistence, version, state, settings["fail_health"], modules)
    log("starting", version=version, pid=os.getpid(), listen=f"{args.bind}:{server.server_port}",
        persistence=persistence, data_schema=data_schema, code_schema=code_schema,
        trades=state["trades"], fail_health=settings["fail_health"])
    if on_probation(persistence, version):
        # slipway's probation contract (docs/probation.md): this release
        # must prove itself healthy, paused, before it places an order.
        server.bot.start_paused("probation")
    return server.bot, server


def main(argv=None):
    args = parse_args(argv)
    try:
        bot, server = prepare(args)
    except StartupError as e:
        print(f"bot: error: {e}", file=sys.stderr, flush=True)
        return 1

    # Signal handlers only enqueue; the main thread does the work. SimpleQueue
    # is the queue that is safe to put() from a signal handler.
    commands = queue.SimpleQueue()
    for signum, command in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"),
                            (signal.SIGUSR1, "pause"), (signal.SIGUSR2, "resume")):
        signal.signal(signum, lambda _s, _f, c=command: commands.put(c))

    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name="http", daemon=True).start()
    bot.start()
    log("ready")

    while True:
        try:
            command = commands.get(timeout=1.0)
        except queue.Empty:
            continue
        try:
            if command == "pause":
                bot.pause("signal")
            elif command == "resume":
                bot.resume("signal")
            elif command == "stop":
                break
        except OSError as e:
            log("signal-failed", command=command, error=e)

    log("stopping")
    server.shutdown()
    server.server_close()
    ok = bot.stop()
    log("stopped", trades=bot.trades, clean=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
