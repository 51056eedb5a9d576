"""A throwaway Orthanc with its DICOMweb plugin on 127.0.0.1 (Debian's ``orthanc`` and ``orthanc-dicomweb``).

Its own JSON configuration in a temporary folder: a free HTTP port, the DICOM (C-STORE) server off, storage and
index in that folder, no authentication, the DicomWeb plugin loaded from the path the Debian package installed it
at (``dpkg -L orthanc-dicomweb``). Started as a child process, waited for until ``/system`` answers, stopped after.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PLUGIN_NAME = "libOrthancDicomWeb.so"
FALLBACK_PLUGIN_PATHS = (Path("/usr/share/orthanc/plugins") / PLUGIN_NAME,)


def binary() -> str | None:
    return shutil.which("Orthanc") or next((str(p) for p in (Path("/usr/sbin/Orthanc"),) if p.is_file()), None)


def plugin_path() -> Path | None:
    """The DicomWeb plugin as the Debian package lists it; else the package's usual place."""
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=30,
                                 check=False).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        listing = []
    found = [Path(line) for line in listing if line.endswith(".so") and "DicomWeb" in line]
    found += [path for path in FALLBACK_PLUGIN_PATHS if path.exists()]
    return next((path for path in found if path.exists()), None)


def missing() -> str | None:
    """Why no Orthanc can be started here (None when one can)."""
    if binary() is None:
        return "the Orthanc binary is not installed (Debian package `orthanc`; scripts/install installs it)"
    if plugin_path() is None:
        return "the Orthanc DICOMweb plugin is not installed (Debian package `orthanc-dicomweb`)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def orthanc_server(timeout_s: float = 30.0) -> Iterator[str]:
    """Yield the DICOMweb root URL (``http://127.0.0.1:PORT/dicom-web``) of a fresh, empty Orthanc."""
    program, plugin = binary(), plugin_path()
    if program is None or plugin is None:
        raise RuntimeError(missing() or "Orthanc is not available")
    base = Path(tempfile.mkdtemp(prefix="medagent-orthanc-"))
    port = _free_port()
    config = {
        "Name": "medagent-test", "HttpPort": port, "HttpBindAddress": "127.0.0.1", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomServerEnabled": False, "DicomPort": _free_port(),
        "StorageDirectory": str(base / "storage"), "IndexDirectory": str(base / "index"),
        "Plugins": [str(plugin)], "HttpTimeout": 30, "StableAge": 1, "ConcurrentJobs": 1,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{port}",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    config_path = base / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (base / "orthanc.log").open("wb")
    process = subprocess.Popen([program, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=base)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {process.returncode}: "
                                   f"{(base / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/system", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer /system within {timeout_s} s")
            time.sleep(0.1)
        yield f"{url}/dicom-web"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()
        if os.environ.get("MEDAGENT_KEEP_ORTHANC") != "1":
            shutil.rmtree(base, ignore_errors=True)
