"""Where Flink lives: the interpreter with PyFlink, FLINK_HOME, Java, the REST URL."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from personatag.config import Settings
from personatag.errors import ConfigError

DEFAULT_VENV = Path(".venv-flink")
JAVA_MIN = 11


@dataclass(frozen=True)
class FlinkHome:
    """A Flink distribution and the Python interpreter that has PyFlink."""

    python: Path
    home: Path

    @property
    def bin(self) -> Path:
        return self.home / "bin"

    def env(self, conf_dir: Path | None = None, log_dir: Path | None = None) -> dict[str, str]:
        """The environment for Flink's scripts (FLINK_HOME, conf and log dirs, Python)."""
        env = dict(os.environ)
        env["FLINK_HOME"] = str(self.home)
        if conf_dir is not None:
            env["FLINK_CONF_DIR"] = str(conf_dir)
        if log_dir is not None:
            env["FLINK_LOG_DIR"] = str(log_dir)
        # Flink's Python driver starts `python` from PATH unless told otherwise.
        env["PYFLINK_CLIENT_EXECUTABLE"] = str(self.python)
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run_python_job(
        self,
        target: str,
        parallelism: int,
        bundle: Path,
        module: str,
        *args: str,
        savepoint: str | None = None,
    ) -> list[str]:
        """`flink run -d` of Python `module` from `bundle` on the cluster at `target`
        (host:port), with this interpreter on the client and the workers; from
        `savepoint` when given."""
        restore = ["-s", savepoint] if savepoint else []
        return [
            str(self.bin / "flink"),
            "run",
            "-d",
            "-m",
            target,
            "-p",
            str(parallelism),
            *restore,
            "-pyfs",
            str(bundle),
            "-pyclientexec",
            str(self.python),
            "-pyexec",
            str(self.python),
            "-pym",
            module,
            *args,
        ]


def _has_pyflink_here() -> bool:
    return importlib.util.find_spec("pyflink") is not None


def flink_python(settings: Settings) -> Path:
    """The interpreter that has PyFlink (settings, this one, or ./.venv-flink)."""
    if settings.flink_python is not None:
        path = settings.flink_python
        if not path.exists():
            raise ConfigError(
                f"PERSONATAG_FLINK_PYTHON={path} does not exist: point it at a Python "
                "interpreter with apache-flink installed"
            )
        return path.absolute()
    if _has_pyflink_here():
        return Path(sys.executable)
    candidate = DEFAULT_VENV / "bin" / "python"
    if candidate.exists():
        return candidate.absolute()
    raise ConfigError(
        "no Python with PyFlink found: run `make flink-venv` (installs apache-flink into "
        "./.venv-flink) or set PERSONATAG_FLINK_PYTHON to an interpreter that has it"
    )


def locate(settings: Settings) -> FlinkHome:
    """Find the Flink distribution; ConfigError with the fix when it is missing."""
    python = flink_python(settings)
    if settings.flink_home is not None:
        home = settings.flink_home.absolute()
    else:
        found = subprocess.run(  # noqa: S603 - our own interpreter path
            [str(python), "-c", "import os, pyflink; print(os.path.dirname(pyflink.__file__))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if found.returncode != 0:
            raise ConfigError(
                f"{python} cannot import pyflink: install apache-flink into it "
                "(`make flink-venv`) or set PERSONATAG_FLINK_PYTHON"
            )
        home = Path(found.stdout.strip())
    if not (home / "bin" / "flink").exists():
        raise ConfigError(
            f"{home} is not a Flink distribution (no bin/flink): set PERSONATAG_FLINK_HOME"
        )
    return FlinkHome(python=python, home=home)


def java_version() -> int | None:
    """The major version of `java` on PATH (or JAVA_HOME), None when there is none."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return None
    out = subprocess.run(  # noqa: S603 - the java found above
        [java, "-version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def rest_url(settings: Settings) -> str:
    """The REST base URL of the cluster jobs go to (no trailing slash)."""
    if settings.flink_url:
        return settings.flink_url.rstrip("/")
    return f"http://127.0.0.1:{settings.flink_rest_port}"
