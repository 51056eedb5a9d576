"""Every source of tools a planner can be offered, set up as a user sets it up: the example family cards copied
into ``<home>/experts`` (the remote card pointed at a real expert service), the example plugin installed with pip,
and a real expert service (``tests.remote_parts``) hosting a built-in tool and a plugin tool. The schema tests
compile what the composition root (``medagent.assembly``) builds from them; no weights are needed to offer them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, TEST_SECRET

PLUGIN = REPO_ROOT / "examples" / "medagent-example-plugin"
CARDS = REPO_ROOT / "examples" / "cards"
SERVED = ["classify_chest_xray", "curb65_score"]  # a built-in tool and the plugin's tool, hosted remotely

# variants whose input models differ from the example cards' (or that add a tool the examples do not build)
EXTRA_CARDS = {
    # every tool the service hosts: the plugin's and the service's own are schema shells built from its JSON
    "remote-all.yaml": "family: remote\nname: far\nurl: {url}\n",
    # a specialist that reads no images asks in words only (its own input model)
    "specialist-text.yaml": "family: specialist_vlm\nname: notes\nendpoint: http://127.0.0.1:8001/v1\n"
                            "model: google/medgemma-27b-text-it\naccepts_images: false\n",
    # the other chain: the lung localizer's boxes prompt the segmenter
    "medsam-lungs.yaml": "family: promptable_segmentation\nname: lungsam\nfolder: ~/models/medsam-vit-base\n"
                         "box_source: lungs\n",
}

# what each configured source provides, as Toolbox.plugin_tools records it (card file or plugin entry point)
PROVIDED: dict[str, set[str]] = {
    "card medsiglip.yaml": {"medsiglip_classify"},
    "card medsam.yaml": {"medsam_segment", "medsam_segment_finding"},
    "card medsam-lungs.yaml": {"lungsam_segment", "lungsam_segment_lungs"},
    "card owlv2.yaml": {"owl_detect"},
    "card siglip-reports.yaml": {"siglip_search_reports", "siglip_search_images"},
    "card medgemma.yaml": {"medgemma_ask", "medgemma_report"},
    "card specialist-text.yaml": {"notes_ask", "notes_report"},
    "card remote-cxr.yaml": {"gpu_classify_chest_xray"},
    "card remote-all.yaml": {"far_classify_chest_xray", "far_curb65_score", "far_wait_a_while"},
    "curb65_score": {"curb65_score"},
    "classify_pneumonia": {"classify_pneumonia"},
}


def install_plugin(root: Path) -> Path:
    """The example plugin installed with ``pip install --target`` (its dist-info carries the entry points);
    the environment itself is never changed. Built with the environment's own setuptools when it has one (an
    isolated build fetches setuptools again: seconds instead of tens of seconds)."""
    source, target = root / "plugin-src", root / "site"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc"))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(target), str(source)]
    if importlib.util.find_spec("setuptools") is not None:
        command[4:4] = ["--no-build-isolation", "--no-index"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"pip install exited {result.returncode}: {result.stderr[-3000:]}"
    return target


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def expert_service(home: Path, plugin_site: Path) -> Iterator[str]:
    """``tests.remote_parts`` serving :data:`SERVED` (and its waiting tool), the plugin visible to it through
    PYTHONPATH; yielded once /v1/health answers, its log shown if it never does."""
    port, log = _free_port(), home / "service.log"
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("MEDAGENT_")}
    environment |= {"MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                    "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), "PYTHONPATH": str(plugin_site)}
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "tests.remote_parts", str(port), *SERVED], cwd=REPO_ROOT,
                                   env=environment, stdout=output, stderr=output, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the service exited {process.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the service did not come up: {log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_cards(experts_dir: Path, service_url: str) -> None:
    """The example cards and :data:`EXTRA_CARDS` as a user configures them, in ``<home>/experts``; the remote
    cards name the running service instead of the example's address."""
    experts_dir.mkdir(parents=True, exist_ok=True)
    for card in CARDS.glob("*.yaml"):
        text = card.read_text(encoding="utf-8")
        if card.name == "remote-cxr.yaml":
            assert "url: http://127.0.0.1:8765\n" in text
            text = text.replace("url: http://127.0.0.1:8765\n", f"url: {service_url}\n")
        (experts_dir / card.name).write_text(text, encoding="utf-8")
    for name, text in EXTRA_CARDS.items():
        (experts_dir / name).write_text(text.format(url=service_url), encoding="utf-8")
