"""`make test` for a user who is not root: Chromium is found where it is, installed only where that
is possible, and the browser tests otherwise skip with how to enable them (fail under CI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import chromium

REPO = Path(__file__).resolve().parents[1]


def executable(path: Path, script: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/bash\n{script}\n")
    path.chmod(0o755)
    return path


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No Chromium anywhere: an empty PATH folder, a HOME without Playwright's downloads, no CI."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    if not (tmp_path / "bin" / "env").exists():  # `sudo env VAR=... apt-get` needs it
        (tmp_path / "bin" / "env").symlink_to(shutil.which("env"))
    return {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path / "home"), **extra}


def test_chromium_is_found_by_variable_on_the_path_and_in_playwrights_downloads(tmp_path):
    env = bare_env(tmp_path)
    assert chromium.find_chromium(env) is None
    browsers = tmp_path / "home" / ".cache" / "ms-playwright"
    downloaded = executable(browsers / "chromium-1187" / "chrome-linux" / "chrome")
    assert chromium.find_chromium(env) == downloaded
    elsewhere = executable(tmp_path / "pw" / "chromium-1200" / "chrome-linux64" / "chrome")
    assert chromium.find_chromium({**env, "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path / "pw")}) == elsewhere
    on_path = executable(tmp_path / "bin" / "chromium-browser")
    assert chromium.find_chromium(env) == on_path
    chosen = executable(tmp_path / "opt" / "my-chrome")
    assert chromium.find_chromium({**env, "CHROMIUM": str(chosen)}) == chosen


def test_a_chromium_variable_that_names_nothing_is_an_error_not_a_fallback(tmp_path):
    executable(tmp_path / "bin" / "chromium")
    env = bare_env(tmp_path, CHROMIUM=str(tmp_path / "nope"))
    with pytest.raises(pytest.skip.Exception, match="CHROMIUM="):
        chromium.require_chromium(env)


def test_without_chromium_the_browser_tests_skip_with_how_to_enable_them_and_fail_under_ci(tmp_path):
    env = bare_env(tmp_path)
    with pytest.raises(pytest.skip.Exception) as skipped:
        chromium.require_chromium(env)
    message = str(skipped.value)
    assert "apt-get install chromium" in message and "CHROMIUM=" in message and "playwright install" in message
    for value in ("true", "1"):
        with pytest.raises(pytest.fail.Exception, match="CI is set"):
            chromium.require_chromium({**env, "CI": value})
    with pytest.raises(pytest.skip.Exception):
        chromium.require_chromium({**env, "CI": "false"})


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("uid", "sudo", "installs"), [
    ("1000", "exit 1", False),  # an ordinary user: no apt-get, the tests will skip
    ("1000", "exit 0", True),  # passwordless sudo works: sudo apt-get
    ("0", None, True),  # root (CI): apt-get
], ids=["user", "sudo", "root"])
def test_make_browser_installs_chromium_only_where_it_may(tmp_path, uid, sudo, installs):
    env = bare_env(tmp_path)
    log = tmp_path / "calls.log"
    executable(tmp_path / "bin" / "id", f'[ "$1" = -u ] && echo {uid}')
    executable(tmp_path / "bin" / "apt-get", f'echo "apt-get $*" >> {log}')
    if sudo is not None:
        executable(tmp_path / "bin" / "sudo", f'[ "$2" = true ] && {sudo}; shift; echo "sudo $*" >> {log}; "$@"')
    make = shutil.which("make")
    result = subprocess.run([make, "-s", "-C", str(REPO), "browser"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    calls = log.read_text() if log.exists() else ""
    assert ("apt-get install" in calls) == installs, calls
    if not installs:
        assert "skipped" in result.stdout and "CHROMIUM=" in result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_browser_leaves_an_installed_chromium_alone(tmp_path):
    env = bare_env(tmp_path)
    log = tmp_path / "calls.log"
    executable(tmp_path / "bin" / "id", "echo 0")
    executable(tmp_path / "bin" / "apt-get", f'echo "apt-get $*" >> {log}')
    for variable in ({"CHROMIUM": str(executable(tmp_path / "opt" / "chrome"))}, {}):
        if not variable:
            executable(tmp_path / "bin" / "google-chrome")
        result = subprocess.run([shutil.which("make"), "-s", "-C", str(REPO), "browser"], env={**env, **variable},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and not log.exists(), result.stdout + result.stderr

