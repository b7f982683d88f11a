"""``GitCollector`` and ``git_info``: the commit a run's code came from (``runs.git``).

Read from the repository that holds the working directory: commit, branch,
whether tracked files have uncommitted changes, and the ``origin`` remote
with any credentials removed. Three git commands with one deadline
(``DEADLINE`` seconds in all); submodules are not scanned and the
repository's fsmonitor hook is not run. The answer is cached per folder for
``CACHE_SECONDS`` so a sweep of short runs does not run git for each one.
Anything that goes wrong gives ``None``: a run never fails for git's sake.
The collector records nothing while the ``capture_git`` setting is off.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .base import Collector, RunContext

__all__ = ["GitCollector", "git_info"]

log = logging.getLogger("notebook_exp.collectors")

CACHE_SECONDS = 5.0
DEADLINE = 3.0  # seconds for all git commands of one reading: a huge or remote-mounted repository is skipped

_cache: dict[Path, tuple[float, dict | None]] = {}
_cache_lock = threading.Lock()


class GitCollector(Collector):
    """The commit, branch and dirty state of the working directory's repository."""

    capabilities = ("git",)

    def collect(self, context: RunContext) -> dict[str, Any]:
        if not context.settings.capture_git:
            return {}
        info = git_info()
        return {"git": info} if info else {}


def git_info(path: str | os.PathLike | None = None) -> dict | None:
    """``{"commit", "branch", "dirty", "remote", "root"}`` of the repository holding
    ``path`` (default: the working directory); ``None`` outside a repository, in
    one without commits, without git, or when git fails or is too slow. ``branch``
    is ``None`` on a detached HEAD; ``remote`` is ``None`` without an ``origin``."""
    try:
        folder = Path(path or os.getcwd()).absolute()
    except OSError:  # the working directory was deleted
        return None
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(folder)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return dict(hit[1]) if hit[1] else None
    try:
        info = _read(folder, now + DEADLINE)
    except Exception:  # noqa: BLE001 - git state is a nicety, never a reason to fail
        log.debug("reading git state of %s failed", folder, exc_info=True)
        info = None
    with _cache_lock:
        _cache[folder] = (now, info)
    return dict(info) if info else None


def _read(folder: Path, deadline: float) -> dict | None:
    if shutil.which("git") is None or not folder.is_dir():
        return None
    status = _git(folder, deadline, "status", "--porcelain=v2", "--branch", "--untracked-files=no",
                  "--ignore-submodules")
    if status is None:
        return None  # not a repository (or too slow)
    heads = dict(line[2:].split(" ", 1) for line in status.splitlines() if line.startswith("# ") and " " in line[2:])
    commit = heads.get("branch.oid", "")
    if not commit or commit == "(initial)":
        return None  # no commits yet
    branch = heads.get("branch.head")
    root = _git(folder, deadline, "rev-parse", "--show-toplevel")
    remote = _git(folder, deadline, "config", "--get", "remote.origin.url")
    return {
        "commit": commit,
        "branch": None if branch in (None, "(detached)") else branch,
        "dirty": any(not line.startswith("#") for line in status.splitlines()),
        "remote": _without_credentials(remote.strip()) if remote else None,
        "root": root.strip() if root else None,
    }


def _git(folder: Path, deadline: float, *args: str) -> str | None:
    """The output of ``git args`` run in ``folder``, or None if it failed or ran past ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    try:
        done = subprocess.run(
            ["git", "-c", "core.fsmonitor=false", "-C", str(folder), *args],
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=left, check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _without_credentials(url: str) -> str:
    """``https://user:token@host/repo`` -> ``https://host/repo``; scp-like URLs are kept."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host))
