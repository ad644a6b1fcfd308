"""The suite never writes into the user's home: HOME and every cache are a temporary folder."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

from yolov2.config import ExperimentConfig, default_cache

REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)
TEMP = Path(tempfile.gettempdir()).resolve()


def test_home_and_the_caches_are_a_temporary_folder() -> None:
    home = Path.home().resolve()
    assert home != REAL_HOME.resolve()
    assert home.is_relative_to(TEMP)
    assert Path(os.environ["XDG_CACHE_HOME"]).resolve().is_relative_to(home)
    assert default_cache().resolve().is_relative_to(home)
    assert ExperimentConfig().cache_dir.resolve().is_relative_to(home)
    assert Path("~/.cache").expanduser().resolve().is_relative_to(home)


def test_subprocesses_inherit_the_temporary_home() -> None:
    code = "from pathlib import Path; print(Path.home())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).resolve() == Path.home().resolve()
