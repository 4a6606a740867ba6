"""What the batch and the stream engine share about the Flink jobs they submit:
the `flink run` client's environment, the JobID and error in its output, and
the root cause of a failed job."""

from __future__ import annotations

import re
from typing import Any

from personatag.config import Settings
from personatag.engines.flink.runtime.home import FlinkHome
from personatag.errors import PersonatagError


class FlinkJobFailed(PersonatagError):
    """The Flink job failed, stalled or could not be submitted."""


# The JobID line of `flink run` (the job program prints the first form itself).
JOB_ID_RE = re.compile(r"(?:PERSONATAG_FLINK_JOB_ID=|JobID )([0-9a-f]{32})")


def client_env(settings: Settings, home: FlinkHome) -> dict[str, str]:
    """The environment of a `flink run` client: the local cluster's conf dir when
    `personatag flink start` wrote one (else the distribution's), logs under the
    data directory."""
    conf = (settings.data_dir / "flink" / "conf").resolve()
    log_dir = (settings.data_dir / "flink" / "log").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    if not (conf / "config.yaml").exists():
        conf = home.home / "conf"
    return home.env(conf_dir=conf, log_dir=log_dir)


def client_error(output: str) -> str:
    """The line of a failed `flink run`'s output that says why (at most 500 chars)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("Caused by:", "Error:", "Exception:"):
        found = [line for line in lines if marker in line and not line.startswith("at ")]
        if found:
            return found[-1][:500]
    return (lines[-1] if lines else "no output")[:500]


def root_cause(exceptions: dict[str, Any]) -> str:
    """The first useful line of a job's root exception (/jobs/:jid/exceptions)."""
    trace = exceptions.get("root-exception") or ""
    entries = (exceptions.get("exceptionHistory") or {}).get("entries") or []
    if not trace and entries:
        trace = entries[0].get("stacktrace") or entries[0].get("exceptionName") or ""
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    causes = [line for line in lines if line.startswith("Caused by:")]
    line = causes[-1][len("Caused by:") :].strip() if causes else (lines[0] if lines else "")
    if "AskTimeoutException" in line and "/taskmanager" in line:
        # An RPC to a task manager went unanswered: the process is hung or paused.
        line = f"a TaskManager stopped answering (RPC timed out): {line}"
    return line[:500] or "no exception reported"
