"""``git_info``: the commit a run's code came from.

Read from the repository that holds the working directory: commit, branch,
whether tracked files have uncommitted changes, and the ``origin`` remote
with any credentials removed. The answer is cached per folder for
``CACHE_SECONDS`` so a sweep of short runs does not run git for each one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ["git_info"]

CACHE_SECONDS = 5.0
TIMEOUT = 3.0  # seconds per git command: a huge or network-mounted repository is skipped, not waited for

_cache: dict[Path, tuple[float, dict | None]] = {}
_cache_lock = threading.Lock()


def git_info(path: str | os.PathLike | None = None) -> dict | None:
    """``{"commit", "branch", "dirty", "remote", "root"}`` of the repository holding
    ``path`` (default: the working directory), or ``None`` outside a repository or
    without git. ``branch`` is ``None`` on a detached HEAD; ``remote`` is ``None``
    without an ``origin``."""
    folder = Path(path or os.getcwd()).absolute()
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(folder)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return dict(hit[1]) if hit[1] else None
    info = _read(folder)
    with _cache_lock:
        _cache[folder] = (now, info)
    return dict(info) if info else None


def _read(folder: Path) -> dict | None:
    if shutil.which("git") is None or not folder.is_dir():
        return None
    head = _git(folder, "rev-parse", "--show-toplevel", "HEAD")
    if head is None:
        return None  # not a repository, or one without commits
    root, commit = head.splitlines()[:2]
    branch = _git(folder, "symbolic-ref", "--quiet", "--short", "HEAD")
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    remote = _git(folder, "config", "--get", "remote.origin.url")
    return {
        "commit": commit,
        "branch": branch.strip() if branch else None,
        "dirty": bool(status.strip()) if status is not None else None,
        "remote": _without_credentials(remote.strip()) if remote else None,
        "root": root,
    }


def _git(folder: Path, *args: str) -> str | None:
    """The output of ``git args`` run in ``folder``, or None if it failed."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _without_credentials(url: str) -> str:
    """``https://user:token@host/repo`` -> ``https://host/repo``; scp-like URLs are kept."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host))
