"""Tests for the example bot (standard library only).

Run from the repository root:

    python3 -m unittest discover -s examples/bot -p 'test_*.py'

Each test copies app/ and schema/ into a fresh temporary "release" directory
(with a slipway/manifest.json, as slipway lays it out), runs the bot from it on
a free loopback port with a temporary persistence directory, and cleans up the
process and the directories afterwards.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = "1.2.3"

# Loopback only: ignore any HTTP(S)_PROXY in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, port, path, timeout=5.0):
    """Return (status, decoded JSON body)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=b"" if method == "POST" else None, method=method
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_until(predicate, timeout=5.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def child_env(**extra):
    # Nothing from the caller's environment may steer the bot or the hook.
    env = {k: v for k, v in os.environ.items()
           if k not in ("BOT_PORT", "BOT_PERSISTENCE") and not k.startswith("SLIPWAY_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class BotTestCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="slipway-bot-test-")
        self.addCleanup(tmp.cleanup)  # registered first, so it runs after the processes are reaped
        self.tmp = Path(tmp.name)
        self.persistence = self.tmp / "persistence"

    # -- fixtures ---------------------------------------------------------

    def make_release(self, name="release", settings=None, manifest=True):
        """A release directory as slipway stages it: app/, schema/, slipway/manifest.json."""
        release = self.tmp / name
        shutil.copytree(HERE / "app", release / "app",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(HERE / "schema", release / "schema")
        if settings is not None:
            path = release / "app" / "bot" / "settings.json"
            merged = json.loads(path.read_text())
            merged.update(settings)
            path.write_text(json.dumps(merged))
        if manifest:
            (release / "slipway").mkdir()
            (release / "slipway" / "manifest.json").write_text(json.dumps({
                "format": 1, "app": "bot", "version": VERSION, "channel": "stable",
                "schema_version": 1, "schema_min_compatible": 1,
            }))
        return release

    def spawn(self, release, *extra_args, port=None):
        """Start the bot (cwd = <release>/app, as the systemd unit does); return (proc, port)."""
        port = port or free_port()
        n = len(list(self.tmp.glob("bot-*.out")))
        stdout = open(self.tmp / f"bot-{n}.out", "w+")
        stderr = open(self.tmp / f"bot-{n}.err", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "--port", str(port),
             "--persistence", str(self.persistence), *extra_args],
            cwd=release / "app", env=child_env(), stdout=stdout, stderr=stderr,
        )
        proc.out, proc.err = stdout, stderr
        self.addCleanup(self._reap, proc)
        return proc, port

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.out.close()
        proc.err.close()

    @staticmethod
    def read(f):
        f.flush()
        f.seek(0)
        return f.read()

    def start(self, release, *extra_args):
        """Spawn and wait until /health answers (200 or 503)."""
        proc, port = self.spawn(release, *extra_args)

        def answering():
            if proc.poll() is not None:
                self.fail(f"bot exited with {proc.returncode}: {self.read(proc.err)}")
            try:
                return http("GET", port, "/health", timeout=1.0)
            except OSError:
                return None

        self.assertTrue(wait_until(answering, timeout=10.0), "bot did not start answering")
        return proc, port

    def expect_exit(self, proc, code, timeout=10.0):
        self.assertEqual(proc.wait(timeout=timeout), code, self.read(proc.err))
        return self.read(proc.err)

    def ticks(self, port):
        return http("GET", port, "/health")[1]["ticks"]

    @property
    def marker(self):
        return self.persistence / "paused"

    def state(self):
        return json.loads((self.persistence / "state.json").read_text())


class HttpTests(BotTestCase):
    def test_health_and_version_report_the_release_version(self):
        proc, port = self.start(self.make_release())
        status, body = http("GET", port, "/health")
        self.assertEqual(status, 200)
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["version"], VERSION)
        self.assertIs(body["paused"], False)
        self.assertIsInstance(body["ticks"], int)
        self.assertEqual(http("GET", port, "/version"), (200, {"version": VERSION}))
        # New data gets the code's schema version; meta/ is slipway's, not ours.
        self.assertEqual((self.persistence / "schema_version").read_text().strip(), "1")
        self.assertFalse((self.persistence / "meta").exists())
        self.assertEqual(http("GET", port, "/nope")[0], 404)
        self.assertEqual(http("GET", port, "/admin/save")[0], 405)

    def test_release_dir_without_manifest_is_a_dev_version(self):
        bare = self.make_release("bare", manifest=False)
        proc, port = self.start(self.make_release(), "--release-dir", str(bare))
        self.assertEqual(http("GET", port, "/version")[1]["version"], "0.0.0-dev")

    def test_quiesce_pauses_and_resume_resumes(self):
        proc, port = self.start(self.make_release())
        self.assertTrue(wait_until(lambda: self.ticks(port) >= 1))

        self.assertEqual(http("POST", port, "/admin/quiesce"),
                         (200, {"paused": True, "acknowledged": True}))
        health = http("GET", port, "/health")[1]
        self.assertIs(health["paused"], True)
        self.assertEqual(self.marker.read_text().strip(), str(proc.pid))
        self.assertEqual(self.state()["trades"], health["trades"])  # persisted at quiesce
        paused_at = health["ticks"]
        time.sleep(1.2)  # more than two tick periods
        self.assertEqual(self.ticks(port), paused_at)

        self.assertEqual(http("POST", port, "/admin/resume"), (200, {"paused": False}))
        self.assertFalse(self.marker.exists())
        self.assertTrue(wait_until(lambda: self.ticks(port) > paused_at, timeout=3.0))

    def test_probation_for_this_version_starts_paused_until_resumed(self):
        meta = self.persistence / "meta"
        meta.mkdir(parents=True)
        (meta / "probation.json").write_text(json.dumps(
            {"version": VERSION, "release": f"{VERSION}-000000000000", "since": "2026-12-02T00:00:00Z"}))
        proc, port = self.start(self.make_release())
        status, health = http("GET", port, "/health")
        self.assertEqual(status, 200)
        self.assertIs(health["paused"], True)
        time.sleep(1.2)  # more than two tick periods: no trade
        health = http("GET", port, "/health")[1]
        self.assertEqual((health["ticks"], health["trades"]), (0, 0))
        self.assertEqual(http("POST", port, "/admin/resume"), (200, {"paused": False}))
        self.assertTrue(wait_until(lambda: self.ticks(port) >= 1, timeout=3.0))

    def test_probation_for_another_version_is_ignored(self):
        meta = self.persistence / "meta"
        meta.mkdir(parents=True)
        (meta / "probation.json").write_text(json.dumps({"version": "9.9.9"}))
        proc, port = self.start(self.make_release())
        self.assertIs(http("GET", port, "/health")[1]["paused"], False)
        self.assertTrue(wait_until(lambda: self.ticks(port) >= 1, timeout=3.0))

    def test_signals_pause_and_resume_with_marker(self):
        proc, port = self.start(self.make_release())
        self.assertTrue(wait_until(lambda: self.ticks(port) >= 1))

        proc.send_signal(signal.SIGUSR1)
        self.assertTrue(wait_until(self.marker.exists), "no paused marker after SIGUSR1")
        self.assertEqual(self.marker.read_text().strip(), str(proc.pid))
        paused_at = self.ticks(port)
        time.sleep(1.2)
        self.assertEqual(self.ticks(port), paused_at)

        proc.send_signal(signal.SIGUSR2)
        self.assertTrue(wait_until(lambda: not self.marker.exists()), "marker left after SIGUSR2")
        self.assertTrue(wait_until(lambda: self.ticks(port) > paused_at, timeout=3.0))

    def test_save_writes_state(self):
        release = self.make_release()
        proc, port = self.start(release)
        self.assertTrue(wait_until(lambda: self.ticks(port) >= 1))
        self.assertEqual(http("POST", port, "/admin/save"), (200, {"saved": True}))
        state = self.state()
        self.assertGreaterEqual(state["trades"], 1)
        self.assertIsNotNone(state["last_tick"])

        # The `save` command slipway runs, against the live bot and a dead port.
        cli = [sys.executable, "-m", "bot.save", "--timeout", "5", "--port"]
        ok = subprocess.run(cli + [str(port)], cwd=release / "app", env=child_env(),
                            capture_output=True, text=True, timeout=20)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        dead = subprocess.run(cli + [str(free_port())], cwd=release / "app", env=child_env(),
                              capture_output=True, text=True, timeout=20)
        self.assertNotEqual(dead.returncode, 0)
        self.assertIn("cannot reach the bot", dead.stderr)

    def test_fail_health_answers_503(self):
        proc, port = self.start(self.make_release(settings={"fail_health": True}))
        status, body = http("GET", port, "/health")
        self.assertEqual(status, 503)
        self.assertEqual(body["status"], "failing")
        self.assertEqual(body["version"], VERSION)


class LifecycleTests(BotTestCase):
    def test_sigterm_persists_and_exits_0(self):
        release = self.make_release()
        proc, port = self.start(release)
        self.assertTrue(wait_until(lambda: self.ticks(port) >= 2))
        seen = http("GET", port, "/health")[1]["trades"]
        proc.send_signal(signal.SIGTERM)
        self.expect_exit(proc, 0)
        self.assertGreaterEqual(self.state()["trades"], seen)
        self.assertIn("stopped", self.read(proc.out))

        # The next start carries on from the saved counter.
        saved = self.state()["trades"]
        _, port = self.start(release)
        self.assertGreaterEqual(http("GET", port, "/health")[1]["trades"], saved)

    def test_sigterm_while_paused_leaves_migrated_data_alone(self):
        proc, port = self.start(self.make_release())
        self.assertTrue(wait_until(lambda: self.ticks(port) >= 1))
        self.assertEqual(http("POST", port, "/admin/quiesce")[0], 200)
        # What the migrate hook does while the old bot is quiesced.
        migrated = dict(self.state(), schema=2)
        (self.persistence / "state.json").write_text(json.dumps(migrated))
        self.assertEqual(http("POST", port, "/admin/save"),
                         (200, {"saved": True, "unchanged": True}))
        proc.send_signal(signal.SIGTERM)
        self.expect_exit(proc, 0)
        self.assertEqual(self.state(), migrated)
        self.assertFalse(self.marker.exists())

    def test_refuses_data_with_a_newer_schema(self):
        self.persistence.mkdir()
        (self.persistence / "schema_version").write_text("2\n")
        proc, _ = self.spawn(self.make_release())
        err = self.expect_exit(proc, 1)
        self.assertIn("newer", err)
        self.assertEqual((self.persistence / "schema_version").read_text(), "2\n")
        self.assertFalse((self.persistence / "state.json").exists())

    def test_crash_on_start_exits_1(self):
        proc, _ = self.spawn(self.make_release(settings={"crash_on_start": True}))
        self.assertIn("crash_on_start", self.expect_exit(proc, 1))

    def test_port_in_use_is_a_clear_error(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            proc, _ = self.spawn(self.make_release(), port=busy.getsockname()[1])
            self.assertIn("already in use", self.expect_exit(proc, 1))


class MigrateTests(BotTestCase):
    def setUp(self):
        super().setUp()
        self.release = self.make_release()
        self.persistence.mkdir()
        (self.persistence / "schema_version").write_text("1\n")
        (self.persistence / "state.json").write_text(json.dumps({"trades": 7, "last_tick": None}))

    def migrate(self, **env):
        # As slipway runs the hook: cwd = the staged release directory.
        return subprocess.run(
            [sys.executable, "app/bot/migrate.py"], cwd=self.release,
            env=child_env(SLIPWAY_PERSISTENCE=str(self.persistence), **env),
            capture_output=True, text=True, timeout=20,
        )

    def test_upgrades_schema_version_and_state(self):
        result = self.migrate(SLIPWAY_SCHEMA_FROM="1", SLIPWAY_SCHEMA_TO="2")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual((self.persistence / "schema_version").read_text().strip(), "2")
        self.assertEqual(self.state(), {"trades": 7, "last_tick": None, "schema": 2})
        # Re-running after a crash is harmless.
        again = self.migrate(SLIPWAY_SCHEMA_FROM="1", SLIPWAY_SCHEMA_TO="2")
        self.assertEqual(again.returncode, 0, again.stderr)
        # And this (schema 1) code now refuses the upgraded data.
        proc, _ = self.spawn(self.release)
        self.assertIn("newer", self.expect_exit(proc, 1))

    def test_refuses_downgrade(self):
        result = self.migrate(SLIPWAY_SCHEMA_FROM="2", SLIPWAY_SCHEMA_TO="1")
        self.assertEqual(result.returncode, 1)
        self.assertIn("downgrade", result.stderr)
        self.assertEqual((self.persistence / "schema_version").read_text(), "1\n")
        self.assertNotIn("schema", self.state())

    def test_refuses_missing_versions(self):
        result = self.migrate(SLIPWAY_SCHEMA_TO="2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("SLIPWAY_SCHEMA_FROM", result.stderr)
        self.assertEqual((self.persistence / "schema_version").read_text(), "1\n")


if __name__ == "__main__":
    unittest.main()
