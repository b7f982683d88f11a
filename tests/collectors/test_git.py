import json
import subprocess

import pytest

import notebook_exp as nx
from notebook_exp.collectors import git


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setattr(git, "CACHE_SECONDS", 0.0)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "train.py").write_text("print('hi')\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def _head(repo):
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_commit_branch_and_clean_state(repo):
    (repo / "sub").mkdir()
    info = git.git_info(repo / "sub")
    assert info == {"commit": _head(repo), "branch": "main", "dirty": False, "remote": None,
                    "root": str(repo)}


def test_uncommitted_changes_to_tracked_files_make_it_dirty(repo):
    (repo / "untracked.txt").write_text("x")
    assert git.git_info(repo)["dirty"] is False
    (repo / "train.py").write_text("print('changed')\n")
    assert git.git_info(repo)["dirty"] is True


def test_remote_credentials_are_removed(repo):
    _git(repo, "remote", "add", "origin", "https://alice:s3cret-token@example.com/team/proj.git")
    assert git.git_info(repo)["remote"] == "https://example.com/team/proj.git"
    _git(repo, "remote", "set-url", "origin", "git@example.com:team/proj.git")
    assert git.git_info(repo)["remote"] == "git@example.com:team/proj.git"


def test_detached_head_has_no_branch(repo):
    _git(repo, "checkout", "-q", "--detach")
    info = git.git_info(repo)
    assert info["branch"] is None and info["commit"] == _head(repo)


def test_outside_a_repository_there_is_nothing(tmp_path):
    assert git.git_info(tmp_path) is None


def test_a_repository_without_commits_or_a_deleted_folder_give_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(git, "CACHE_SECONDS", 0.0)
    _git(tmp_path, "init", "-q")
    assert git.git_info(tmp_path) is None
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert git.git_info() is None


def test_a_remote_url_that_does_not_parse_is_not_stored(repo):
    _git(repo, "remote", "add", "origin", "https://[oops@example.com/repo")
    assert git.git_info(repo)["remote"] == "(unparsable URL)"


def test_answers_are_cached_per_folder(repo, monkeypatch):
    monkeypatch.setattr(git, "CACHE_SECONDS", 60.0)
    first = git.git_info(repo)
    _git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    assert git.git_info(repo) == first
    monkeypatch.setattr(git, "CACHE_SECONDS", 0.0)
    assert git.git_info(repo)["commit"] == _head(repo) != first["commit"]


def test_a_run_records_the_commit_it_ran_from(repo, monkeypatch, store_path, read_only):
    monkeypatch.chdir(repo)
    with nx.start_run("from-git") as run:
        run.log(loss=1.0)
    (value,) = read_only(store_path, "SELECT git FROM runs WHERE run_id = ?", [run.run_id])[0]
    assert json.loads(value)["commit"] == _head(repo)


def test_a_submitted_run_records_the_commit_it_was_submitted_from(repo, monkeypatch, store_path, read_only):
    monkeypatch.chdir(repo)
    job = nx.submit(lambda run: run.log(loss=1.0), executor="process")
    job.wait(timeout=60)
    assert job.status == "completed"
    (value,) = read_only(store_path, "SELECT git FROM runs WHERE run_id = ?", [job.run_id])[0]
    assert json.loads(value) == git.git_info(repo)


def test_capture_git_off_records_nothing(repo, monkeypatch, store_path, read_only):
    monkeypatch.chdir(repo)
    monkeypatch.setenv("NOTEBOOK_EXP_CAPTURE_GIT", "false")
    nx.config.reset_settings()
    with nx.start_run("no-git") as run:
        run.log(loss=1.0)
    assert read_only(store_path, "SELECT git FROM runs WHERE run_id = ?", [run.run_id]) == [(None,)]
