"""A minimal PEP 517 build backend (standard library only) for the demo
dependency: builds a pure-Python wheel of the `slipway_demo_dep` package.

Deterministic: entries sorted, timestamps from SOURCE_DATE_EPOCH (at least
1980-01-01, the zip format's epoch), fixed permissions, so the same source
gives the same wheel bytes and so the same release id.
"""

import base64
import hashlib
import os
import re
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "slipway_demo_dep"
DIST = "slipway_demo_dep"
NAME = "slipway-demo-dep"


def _version():
    text = (HERE / PACKAGE / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not match:
        raise RuntimeError(f"no __version__ in {PACKAGE}/__init__.py")
    return match.group(1)


def _date_time():
    epoch = max(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")), 315532800)
    return time.gmtime(epoch)[:6]


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info = Path(metadata_directory) / f"{DIST}-{_version()}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(_metadata())
    (dist_info / "WHEEL").write_text(_wheel())
    return dist_info.name


def _metadata():
    return f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {_version()}\n"


def _wheel():
    return "Wheel-Version: 1.0\nGenerator: slipway-demo backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version = _version()
    name = f"{DIST}-{version}-py3-none-any.whl"
    dist_info = f"{DIST}-{version}.dist-info"
    files = []
    for path in sorted((HERE / PACKAGE).rglob("*.py")):
        rel = path.relative_to(HERE).as_posix()
        files.append((rel, path.read_bytes()))
    files.append((f"{dist_info}/METADATA", _metadata().encode()))
    files.append((f"{dist_info}/WHEEL", _wheel().encode()))
    record = [_record_line(n, d) for n, d in files] + [f"{dist_info}/RECORD,,"]
    files.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    stamp = _date_time()
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files:
            info = zipfile.ZipInfo(rel, date_time=stamp)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return name
