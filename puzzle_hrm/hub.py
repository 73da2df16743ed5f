"""Hugging Face hub downloads that fail fast offline and say what to do instead.

huggingface_hub retries an unreachable hub for ~30 s and then raises a long chain of errors. Here
the hub's host is tried once (a 3 s TCP connect); when it cannot be reached the download is asked of
the local cache only, and either way a failure is one line naming the repo and the offline way out.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0


@functools.cache
def hub_reachable() -> bool:
    """False under HF_HUB_OFFLINE=1 or when the hub's host (HF_ENDPOINT) takes no TCP connection."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=CONNECT_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def from_hub(spec: str, download: Callable[[bool], str], offline_hint: str) -> Path:
    """download(local_files_only) -> path; unreachable hub: the cache only; failure: a ValueError on one line."""
    local_only = not hub_reachable()
    try:
        return Path(download(local_only))
    except Exception as err:  # the hub's errors come in many types (HTTP, cache miss, auth); name the repo either way
        why = "the hub is unreachable and it is not in the local Hugging Face cache" if local_only else f"download failed ({type(err).__name__}: {err})"
        raise ValueError(f"{spec}: {why}; offline, {offline_hint}") from None
