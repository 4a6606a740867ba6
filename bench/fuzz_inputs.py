"""Bad input through every entry point: criteria, request files, imports, contact edits.

    .venv/bin/python bench/fuzz_inputs.py [--cases N] [--timeout S] [--keep]

Builds a corpus (deep nesting, huge numbers, date overflows, lone surrogates, long
lists, pathological `like` patterns, huge and/or chains, bad JSON, bad CSV, deep
JSON lines, directories, wrong types, unicode edge cases, ...), then runs each
case through

- the CLI (a `personatag` subprocess per case: `preview`, `submit`, `import`,
  `contact set`),
- the API (a real `personatag serve --no-dispatcher` on a loopback port, with a
  token: `POST /preview`, `POST /criteria/validate`, `POST /requests`,
  `PATCH /contacts/ID`),
- the dispatcher (request files dropped into the local requests bucket, then
  `personatag dispatcher --once`; the outcome is the request's summary.json).

Each run is classified: `clean` (a refusal with a one-line error), `accepted`,
`traceback` (a Python traceback or `unexpected ...` on stderr), `5xx`, `timeout`
(the per-case limit), `no-outcome` (the dispatcher left no summary), and
`half-written` (rows changed although the input was refused, or a different
number of rows than reported). Time and peak memory (the subprocess's max RSS,
or the server's peak-RSS growth) are kept per case; the script prints one line
per run and a summary table, and writes both as JSON next to its work folder.
Not part of the test suite: it needs minutes, not seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERSONA = "fz"
WORDS = ["EMEA", "Energy", "CIO", "Ünïcödé", "日本語", "😀", "\u200b", "a\u0301", "İ", "ß"]


@dataclass
class Case:
    name: str
    kind: str  # expr | request | import | contact
    payload: Any  # expr: str; request: bytes; import: (suffix, bytes | None); contact: dict
    cid: str = "c00000001"  # contact cases: the id


@dataclass
class Run:
    case: str
    kind: str
    channel: str
    outcome: str
    seconds: float
    peak_mb: float | None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---- the corpus --------------------------------------------------------------


def nest(depth: int, inner: str = 'region = "EMEA"') -> str:
    return "(" * depth + inner + ")" * depth


def corpus(limit: int | None) -> list[Case]:
    cases: list[Case] = []

    def expr(name: str, text: str) -> None:
        cases.append(Case(name, "expr", text))

    # nesting: parentheses, not chains, count-where, both sides of the limit
    for d in (5, 19, 20, 21, 50, 1000, 5000, 100_000):
        expr(f"parens-{d}", nest(d))
    for d in (20, 21, 3000, 50_000):
        expr(f"nots-{d}", "not " * d + 'region = "EMEA"')
    for d in (5, 25):
        inner = "".join(f'(sector = "s{i}" or ' for i in range(d)) + 'sector = "x"' + ")" * d
        expr(f"count-where-{d}", f"count(read where {inner}, 30d) >= 1")
    expr(
        "alternating-and-or-20",
        "".join(f'(region = "r{i}" {"and" if i % 2 else "or"} ' for i in range(20))
        + 'region = "x"'
        + ")" * 20,
    )
    expr("unbalanced-open", "(" * 500)
    expr("unbalanced-close", 'region = "x"' + ")" * 500)
    # numbers
    for digits in (19, 20, 100, 101, 4300, 4301, 10_000, 100_000):
        expr(f"int-{digits}-digits", "seniority > " + "9" * digits)
        expr(f"neg-int-{digits}-digits", "seniority > -" + "9" * digits)
    for raw in ("1e308", "1e309", "-1e309", "1.5e-400", "0." + "0" * 5000 + "1", "9" * 50 + ".5"):
        expr(f"float-{raw[:12]}", f"seniority > {raw}")
    expr("count-k-huge", "count(read, 30d) > " + "9" * 30)
    expr("window-huge", "last_login_at within " + "9" * 30 + "d")
    expr("window-zero", "last_login_at within 0d")
    # dates
    for text in (
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00-14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T23:59:59+14:00",
        "0001-01-01",
        "9999-12-31",
        "0000-01-01",
        "10000-01-01",
        "2026-02-30",
        "2026-06-30T25:00:00Z",
        "2026-06-30T12:00:00+24:00",
        "2026-06-30T12:00:00.9999999Z",
        "",
        "now",
        "2026-06-30\ud800",
    ):
        expr(f"date-{text[:24] or 'empty'}", f'created_at > date("{text}")')
    expr(
        "between-dates-overflow",
        'created_at between date("0001-01-01T00:00:00+01:00") '
        'and date("9999-12-31T23:00:00-02:00")',
    )
    # strings: surrogates, unicode, length
    for ch in ("\ud800", "\udfff", "\udced", "\ud83d"):
        expr(f"surrogate-{ord(ch):x}", f'region = "EM{ch}EA"')
        expr(f"surrogate-like-{ord(ch):x}", f'job_title like "%{ch}%"')
    expr("surrogate-persona", 'persona("\ud800")')
    expr("surrogate-outside-string", 'region = "x" \ud800')
    for w in WORDS:
        expr(f"unicode-{w.encode('unicode_escape').decode()[:10]}", f'job_title ilike "%{w}%"')
    expr("nul-in-string", 'region = "a\x00b"')
    expr("bidi-override", 'region = "\u202eAEME"')
    for n in (1000, 1001, 100_000, 1_000_000):
        expr(f"string-{n}", f'region = "{"x" * n}"')
    expr("unterminated-string", 'region = "' + "x" * 50_000)
    expr("many-escapes", 'region = "' + "\\\\" * 10_000 + '"')
    # like patterns
    for k in (10, 20, 200):
        expr(f"like-percent-a-{k}", f'job_title like "{"%a" * k}%b"')
        expr(f"ilike-percent-a-{k}", f'job_title ilike "{"%A" * k}%B"')
    expr("like-underscores", f'job_title like "{"_%" * 300}"')
    expr("like-only-percent", f'job_title like "{"%" * 1000}"')
    # lists
    for n in (1000, 1001, 10_000, 100_000):
        values = ", ".join(f'"v{i}"' for i in range(n))
        expr(f"in-{n}", f"region in ({values})")
        expr(f"not-in-{n}", f"region not in ({values})")
    expr(
        "contains-any-1001",
        "interests contains_any (" + ", ".join(f'"i{i}"' for i in range(1001)) + ")",
    )
    expr("in-trailing-comma", 'region in ("a",)')
    # chains
    for n in (500, 501, 1000, 1600, 2000, 100_000):
        expr(f"or-{n}", " or ".join(f'id = "{i % 10}"' for i in range(n)))
    for n in (500, 2000):
        expr(f"and-{n}", " and ".join(f"seniority != {i}" for i in range(n)))
    # syntax and type garbage
    for text in (
        "",
        " ",
        "\n" * 10_000,
        "region",
        "region =",
        "= 1",
        "region = EMEA",
        "seniority = '1'",
        "region == 'x'",
        "REGION = 1",
        "count(",
        "persona()",
        "count(read, 30d)",
        "seniority = true",
        'interests = "x"',
        "region is nul",
        "\x00",
        "\t\r\x0b\x0c",
        'region = "x" /* c */',
        "seniority > 1e",
        "seniority > --1",
        "seniority > 1..2",
        "last_login_at within -5d",
        'count(login where sector = "x", 30d) > 1',
        'region = "x"' + " " * 19_990,
        'region = "x"' + " " * 20_000,
    ):
        expr(f"syntax-{text[:16].encode('unicode_escape').decode()}-{len(text)}", text)

    # request files (raw bytes through submit / POST /requests / the bucket)
    def request(name: str, body: bytes | dict[str, Any]) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        cases.append(Case(name, "request", raw))

    def doc(**fields: Any) -> dict[str, Any]:
        return {"version": 1, "persona": PERSONA, "action": "tag", **fields}

    request("ok-expr", doc(expr='region = "EMEA"'))
    request("deep-expr-5000", doc(expr=nest(5000)))
    request("int-4301", doc(expr="seniority > " + "9" * 4301))
    request("date-overflow", doc(expr='created_at > date("0001-01-01T00:00:00+14:00")'))
    request(
        "surrogate-expr",
        b'{"version": 1, "persona": "fz", "action": "tag", "expr": "region = \\"\\ud800\\""}',
    )
    request(
        "surrogate-persona",
        b'{"version": 1, "persona": "\\ud800", "action": "tag", "expr": "region = \\"x\\""}',
    )
    request(
        "surrogate-contact",
        b'{"version": 1, "persona": "fz", "action": "tag", "contacts": ["c1", "\\udc80"]}',
    )
    request("in-100k", doc(expr="id in (" + ", ".join(f'"c{i:08d}"' for i in range(100_000)) + ")"))
    request("or-2000", doc(expr=" or ".join(f'id = "{i % 10}"' for i in range(1600))))
    request("like-pathological", doc(expr=f'job_title like "{"%a" * 20}%b"'))
    request("contacts-100k", doc(contacts=[f"c{i:08d}" for i in range(100_000)]))
    request("contacts-empty", doc(contacts=[]))
    request("contacts-wrong-type", doc(contacts=[1, 2, None]))
    request("contacts-nul", doc(contacts=["c\x001"]))
    request("contacts-huge-id", doc(contacts=["c" * 100_000]))
    request("as-of-overflow", doc(expr='region = "x"', as_of="0001-01-01T00:00:00+14:00"))
    request("as-of-garbage", doc(expr='region = "x"', as_of="yesterday"))
    request("as-of-int", doc(expr='region = "x"', as_of=5))
    request("persona-missing", {"version": 1, "expr": 'region = "x"'})
    request("persona-unknown", doc(expr='region = "x"', persona="no-such"))
    request("persona-huge", doc(expr='region = "x"', persona="p" * 10_000))
    request("version-2", {**doc(expr='region = "x"'), "version": 2})
    request("version-string", {**doc(expr='region = "x"'), "version": "1"})
    request("action-bad", {**doc(expr='region = "x"'), "action": "explode"})
    request("expr-and-contacts", doc(expr='region = "x"', contacts=["c1"]))
    request("expr-number", doc(expr=5))
    request("expr-object", doc(expr={"op": "not"}))
    request("expr-null", doc(expr=None))
    request("unknown-key", doc(expr='region = "x"', hack=True))
    request(
        "duplicate-key",
        b'{"version": 1, "version": 1, "persona": "fz", "expr": "region = \\"x\\""}',
    )
    request("nan", b'{"version": NaN, "persona": "fz", "expr": "region = \\"x\\""}')
    request("json-deep-100k", b"[" * 100_000 + b"]" * 100_000)
    request("json-deep-object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    request("json-int-5000", b'{"version": ' + b"9" * 5000 + b"}")
    request("json-array", b"[1, 2, 3]")
    request("json-string", b'"hello"')
    request("json-null", b"null")
    request("json-empty", b"")
    request("json-garbage", b"\x00\xff\xfe garbage {")
    request("json-truncated", b'{"version": 1, "persona": "fz", "expr": "region')
    request("json-bom", b"\xef\xbb\xbf" + json.dumps(doc(expr='region = "x"')).encode())
    request(
        "json-latin1", json.dumps(doc(expr='region = "é"'), ensure_ascii=False).encode("latin-1")
    )
    request("json-utf16", json.dumps(doc(expr='region = "x"')).encode("utf-16"))
    request("json-big-padding", json.dumps(doc(expr='region = "x"')).encode() + b" " * 5_000_000)
    request("request-id-bad", doc(expr='region = "x"', request_id="../../etc/passwd"))
    request(
        "request-id-surrogate",
        b'{"version": 1, "persona": "fz", "expr": "region = \\"x\\"", "request_id": "r\\ud800"}',
    )
    request("request-id-huge", doc(expr='region = "x"', request_id="r" * 5000))

    # imports (a file, or a directory when the content is None)
    def imp(name: str, suffix: str, content: bytes | None) -> None:
        cases.append(Case(name, "import", (suffix, content)))

    header = b"id,region,seniority,interests,created_at\n"
    imp("csv-ok", ".csv", header + b"f1,EMEA,3,a;b,2026-01-01\nf2,APAC,4,,\n")
    imp("csv-bad-int-then-ok", ".csv", header + b"f3,EMEA,x,,\nf4,EMEA,5,,\n")
    imp("csv-int-5000", ".csv", header + b"f5,EMEA," + b"9" * 5000 + b",,\nf6,EMEA,1,,\n")
    imp(
        "csv-date-overflow", ".csv", header + b"f7,EMEA,1,,0001-01-01T00:00:00+14:00\nf8,EMEA,1,,\n"
    )
    imp("csv-encoded-surrogate", ".csv", header + b"f9,EM\xed\xa0\x80EA,1,,\nf10,EMEA,1,,\n")
    imp("csv-latin1", ".csv", header + "f11,Zürich,1,,\n".encode("latin-1"))
    imp("csv-nul", ".csv", header + b"f12,E\x00M,1,,\nf13,EMEA,1,,\n")
    imp("csv-wrong-width", ".csv", header + b"f14,EMEA\nf15,EMEA,1,,,,,,\nf16,EMEA,1,,\n")
    imp("csv-unclosed-quote", ".csv", header + b'f17,"EMEA,1,,\nf18,EMEA,1,,\n')
    imp("csv-huge-field", ".csv", header + b"f19," + b"x" * 2_000_000 + b",1,,\nf20,EMEA,1,,\n")
    imp("csv-unknown-column", ".csv", b"id,regoin\nf21,EMEA\n")
    imp("csv-no-header", ".csv", b"")
    imp("csv-dup-column", ".csv", b"id,id\nf22,f22\n")
    imp(
        "csv-10k-rows",
        ".csv",
        header + b"".join(b"g%d,EMEA,%d,,\n" % (i, i % 9) for i in range(10_000)),
    )
    imp(
        "csv-bom-crlf",
        ".csv",
        b"\xef\xbb\xbf" + header.replace(b"\n", b"\r\n") + b"f23,EMEA,1,,\r\n",
    )
    jl = b'{"id": "j1", "region": "X"}\n'
    imp("jsonl-ok", ".jsonl", jl)
    imp(
        "jsonl-deep-line",
        ".jsonl",
        jl + b"[" * 100_000 + b"]" * 100_000 + b'\n{"id": "j2", "region": "Y"}\n',
    )
    imp(
        "jsonl-deep-object",
        ".jsonl",
        b'{"id": "j3", "region": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001 + b'\n{"id": "j4"}\n',
    )
    imp(
        "jsonl-int-5000",
        ".jsonl",
        b'{"id": "j5", "seniority": ' + b"9" * 5000 + b'}\n{"id": "j6"}\n',
    )
    imp(
        "jsonl-surrogate",
        ".jsonl",
        b'{"id": "j7", "region": "\\ud800"}\n{"id": "j8\\udfff"}\n{"id": "j9"}\n',
    )
    imp(
        "jsonl-surrogate-list",
        ".jsonl",
        b'{"id": "j10", "interests": ["a", "\\udc80"]}\n{"id": "j11"}\n',
    )
    imp(
        "jsonl-wrong-types",
        ".jsonl",
        b'{"id": 5}\n{"id": "j12", "seniority": "many"}\n{"id": "j13", "interests": {"a": 1}}\n'
        b'{"id": "j14", "created_at": 12}\n{"id": "j15"}\n',
    )
    imp(
        "jsonl-nan",
        ".jsonl",
        b'{"id": "j16", "seniority": NaN}\n{"id": "j17", "seniority": 1e999}\n{"id": "j18"}\n',
    )
    imp("jsonl-not-objects", ".jsonl", b'[1]\n"x"\nnull\n{"id": "j19"}\n')
    imp("jsonl-garbage", ".jsonl", b"\x00\x01\x02\n{\n}\n")
    imp("jsonl-unknown-key-late", ".jsonl", jl + b'{"id": "j20", "regoin": "x"}\n')
    imp(
        "jsonl-date-overflow",
        ".jsonl",
        b'{"id": "j21", "created_at": "9999-12-31T23:00:00-14:00"}\n{"id": "j22"}\n',
    )
    imp("directory", "", None)
    imp("no-extension", "", b"id\nx1\n")
    imp("empty-jsonl", ".jsonl", b"")

    # contact edits (CLI `contact set`, API PATCH)
    def contact(name: str, values: dict[str, Any], cid: str = "c00000001") -> None:
        cases.append(Case(name, "contact", values, cid))

    contact("ok", {"region": "EMEA"})
    contact("surrogate-value", {"region": "EM\ud800"})
    contact("surrogate-list", {"interests": "a;\udc80"})
    contact("surrogate-field-name", {"reg\ud800ion": "x"})
    contact("surrogate-id", {"region": "x"}, cid="c\ud800")
    contact("nul-value", {"region": "a\x00b"})
    contact("int-5000", {"seniority": "9" * 5000})
    contact("int-overflow", {"seniority": str(2**63)})
    contact("date-overflow", {"created_at": "0001-01-01T00:00:00+14:00"})
    contact("date-garbage", {"created_at": "tomorrow"})
    contact("float-inf", {"seniority": "inf"})
    contact("huge-string", {"region": "x" * 1_000_000})
    contact("unknown-field", {"regoin": "x"})
    contact("id-field", {"id": "other"})
    contact("unicode", {"job_title": "Directeur Général 日本 😀 \u200b"})
    contact("empty-is-null", {"region": ""})
    contact("bool-garbage", {"seniority": "true"})
    contact("list-huge", {"interests": ";".join(f"i{i}" for i in range(100_000))})
    contact("create-new-surrogate", {"region": "x", "create": True}, cid="n\udfff")
    contact("huge-id", {"region": "x"}, cid="c" * 10_000)
    return cases[:limit] if limit else cases


# ---- running -----------------------------------------------------------------


def _argv_bytes(arg: str) -> bytes:
    """An argument as the bytes a shell would pass: lone surrogates as their UTF-8
    encoding (which the receiving Python reads back as lone surrogates)."""
    try:
        return os.fsencode(arg)
    except UnicodeEncodeError:
        return arg.encode("utf-8", "surrogatepass")


def run_process(
    args: list[str], env: dict[str, str], timeout: float, cwd: Path
) -> tuple[int | None, str, str, float, float]:
    """(exit code or None on timeout, stdout, stderr, seconds, peak RSS in MB)."""
    out, err = cwd / ".out", cwd / ".err"  # files, not pipes: nothing blocks on a full pipe
    start = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        try:
            proc = subprocess.Popen(
                [_argv_bytes(a) for a in args], env=env, stdout=o, stderr=e, cwd=cwd
            )
        except OSError as exc:  # E2BIG: one argument over the kernel's 128 KiB
            return SKIPPED, "", f"cannot run: {exc.strerror}", 0.0, 0.0
        except ValueError as exc:  # a NUL byte cannot be passed in an argument
            return SKIPPED, "", f"cannot run: {exc}", 0.0, 0.0
        code: int | None = None
        peak = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                peak = usage.ru_maxrss / 1024
                proc.returncode = code
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                _, _, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                peak = usage.ru_maxrss / 1024
                break
            time.sleep(0.02)
    seconds = time.monotonic() - start
    read = lambda p: p.read_bytes().decode("utf-8", "replace")  # noqa: E731
    return code, read(out), read(err), seconds, peak


SKIPPED = -999  # the command line could not even be started (argument too long)


def classify_cli(code: int | None, stderr: str) -> tuple[str, str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if code == SKIPPED:
        return "skipped", stderr
    if code is None:
        return "timeout", ""
    if "Traceback" in stderr or "error: unexpected" in stderr:
        return "traceback", last[:160]
    if code == 0:
        return "accepted", ""
    if lines and lines[0].startswith("error: ") and len(lines) == 1:
        return "clean", last[:160]
    # several "FILE:LINE: reason" lines then a summary are an import's clean report
    return ("clean" if code in (1, 2) else "traceback"), last[:160]


class Api:
    def __init__(self, port: int, token: str, pid: int) -> None:
        self.port, self.token, self.pid = port, token, pid

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def call(self, method: str, path: str, body: bytes, timeout: float) -> tuple[int | None, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(
                method,
                path,
                body=body,
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
            )
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        except (TimeoutError, OSError):
            return None, ""
        finally:
            conn.close()


def classify_api(status: int | None, text: str) -> tuple[str, str]:
    if status is None:
        return "timeout", ""
    if status >= 500:
        return "5xx", text[:160]
    try:
        body = json.loads(text)
    except ValueError:
        body = {}
    if status < 300:
        if isinstance(body, dict) and body.get("ok") is False:  # validate
            return "clean", str(body.get("error"))[:160]
        return "accepted", ""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = str(error.get("message", ""))
    return ("clean" if message and "\n" not in message else "unclear"), (
        f"{status} {error.get('code')}: {message}"[:160]
    )


def json_bytes(obj: Any) -> bytes:
    """JSON with lone surrogates written as \\uXXXX escapes (as any client would)."""
    return json.dumps(obj).encode()


def contact_row(store_url: str, cid: str) -> str | None:
    """The contact's row as text (None when absent or the id is not storable text)."""
    import sqlalchemy as sa

    try:
        cid.encode()
    except UnicodeEncodeError:
        return None
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM contacts WHERE id = :id"), {"id": cid})
            found = row.mappings().first()
            return None if found is None else repr(sorted(dict(found).items()))
    finally:
        engine.dispose()


def count_rows(store_url: str, sql: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=None, help="run only the first N cases")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case and channel")
    parser.add_argument("--contacts", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]  # case names

    work = Path(tempfile.mkdtemp(prefix="fuzz-inputs-"))
    data = work / "data"
    store_url = f"sqlite:///{data / 'personatag.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    env |= {
        "PERSONATAG_DATA_DIR": str(data),
        "PERSONATAG_STORE_URL": store_url,
        "PERSONATAG_ACTOR": "fuzz",
        "PERSONATAG_METRICS_PORT": "0",
    }
    cli = [sys.executable, "-m", "personatag.cli"]
    T = args.timeout

    def sh(*a: str) -> str:
        code, out, err, _, _ = run_process([*cli, *a], env, 300, work)
        if code != 0:
            raise SystemExit(f"setup failed: personatag {' '.join(a)}: {err}")
        return out

    sh("init")
    sh("generate", "--contacts", str(args.contacts), "--seed", "7")
    sh("persona", "add", PERSONA, "--name", "Fuzz", "--category", "test")
    sh("user", "add", "fuzz", "--role", "editor")
    token = sh("token", "create", "fuzz", "--name", "fuzz").strip().split()[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server_log = (work / "serve.log").open("wb")
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--no-dispatcher"],
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    runs: list[Run] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("serve did not start") from None
                time.sleep(0.2)
        api = Api(port, token, server.pid)
        cases = corpus(args.cases)
        print(f"{len(cases)} cases; work folder {work}", flush=True)
        requests_dir = data / "buckets" / "requests"
        results_dir = data / "buckets" / "results"
        requests_dir.mkdir(parents=True, exist_ok=True)
        dropped: dict[str, Case] = {}

        def record(run: Run) -> None:
            runs.append(run)
            mem = "" if run.peak_mb is None else f"{run.peak_mb:7.0f} MB"
            print(
                f"{run.outcome:12} {run.kind:8} {run.channel:11} {run.seconds:6.2f}s {mem:>10}  "
                f"{run.case[:40]:40} {run.detail[:110]}",
                flush=True,
            )

        def api_run(case: Case, channel: str, method: str, path: str, body: bytes) -> None:
            before = api.peak_mb()
            start = time.monotonic()
            status, text = api.call(method, path, body, T)
            outcome, detail = classify_api(status, text)
            record(
                Run(
                    case.name,
                    case.kind,
                    channel,
                    outcome,
                    time.monotonic() - start,
                    api.peak_mb() - before,
                    detail,
                )
            )

        members = f"SELECT count(*) FROM memberships WHERE persona_pk = (SELECT pk FROM personas WHERE key = '{PERSONA}')"  # noqa: E501

        for n, case in enumerate(cases):
            tmp = work / f"case-{n}"
            tmp.mkdir()
            if case.kind == "expr":
                code, _, err, secs, peak = run_process(
                    [*cli, "preview", "--expr", case.payload, "--persona", PERSONA], env, T, tmp
                )
                outcome, detail = classify_cli(code, err)
                record(Run(case.name, case.kind, "cli-preview", outcome, secs, peak, detail))
                body = json_bytes({"expr": case.payload, "persona": PERSONA})
                api_run(case, "api-preview", "POST", "/api/v1/preview", body)
                body = json_bytes({"expr": case.payload})
                api_run(case, "api-validate", "POST", "/api/v1/criteria/validate", body)
                rid = f"fz-e{n}"
                raw = json_bytes(
                    {
                        "version": 1,
                        "request_id": rid,
                        "persona": PERSONA,
                        "action": "tag",
                        "expr": case.payload,
                    }
                )
                (requests_dir / f"{rid}.json").write_bytes(raw)
                dropped[rid] = case
            elif case.kind == "request":
                path = tmp / "request.json"
                path.write_bytes(case.payload)
                code, _, err, secs, peak = run_process([*cli, "submit", str(path)], env, T, tmp)
                outcome, detail = classify_cli(code, err)
                record(Run(case.name, case.kind, "cli-submit", outcome, secs, peak, detail))
                api_run(case, "api-request", "POST", "/api/v1/requests", case.payload)
                rid = f"fz-r{n}"
                (requests_dir / f"{rid}.json").write_bytes(case.payload)
                dropped[rid] = case
            elif case.kind == "import":
                suffix, content = case.payload
                target = tmp / f"contacts{suffix}"
                if content is None:
                    target.mkdir()
                else:
                    target.write_bytes(content)
                before = count_rows(store_url, "SELECT count(*) FROM contacts")
                code, out, err, secs, peak = run_process(
                    [*cli, "import", "contacts", str(target), "--json"], env, T, tmp
                )
                after = count_rows(store_url, "SELECT count(*) FROM contacts")
                outcome, detail = classify_cli(code, err)
                extra: dict[str, Any] = {"rows_before": before, "rows_after": after}
                if code == 0:
                    try:
                        reported = json.loads(out)
                        extra["reported"] = reported
                        if after - before != reported.get("inserted"):
                            outcome, detail = (
                                "half-written",
                                f"rows +{after - before}, reported {reported}",
                            )
                        elif reported.get("rejected"):
                            detail = f"{reported} / {err.strip().splitlines()[0][:80]}"
                    except ValueError:
                        outcome = "unclear"
                elif after != before:
                    outcome, detail = "half-written", f"refused but rows {before} -> {after}"
                record(Run(case.name, case.kind, "cli-import", outcome, secs, peak, detail, extra))
            else:  # contact
                values = {k: v for k, v in case.payload.items() if k != "create"}
                create = bool(case.payload.get("create"))
                pairs = [f"{k}={v}" for k, v in values.items()]
                cmd = [*cli, "contact", "set", case.cid, *pairs, *(["--create"] if create else [])]
                before_row = contact_row(store_url, case.cid)
                code, _, err, secs, peak = run_process(cmd, env, T, tmp)
                outcome, detail = classify_cli(code, err)
                if outcome != "accepted" and contact_row(store_url, case.cid) != before_row:
                    outcome, detail = "half-written", f"refused but the contact changed: {detail}"
                record(Run(case.name, case.kind, "cli-set", outcome, secs, peak, detail))
                body = json_bytes({"fields": values, "create": create})
                cid = case.cid.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                url = "/api/v1/contacts/" + urllib.parse.quote(cid, safe="")
                api_run(case, "api-patch", "PATCH", url, body)
            shutil.rmtree(tmp, ignore_errors=True)

        # the stream's Python evaluator: every like/ilike case as an ongoing criterion,
        # then one contact change that all of them read, then one `stream --once`
        ongoing = [c for c in cases if c.kind == "expr" and c.name.startswith(("like", "ilike"))]
        for n, case in enumerate(ongoing):
            code, _, err, secs, peak = run_process(
                [*cli, "criterion", "add", f"fz_like_{n}", "--persona", PERSONA,
                 "--expr", case.payload, "--mode", "ongoing"],
                env, T, work,
            )  # fmt: skip
            outcome, detail = classify_cli(code, err)
            record(Run(case.name, case.kind, "cli-ongoing", outcome, secs, peak, detail))
        if ongoing:
            run_process([*cli, "stream", "--once"], env, T * 5, work)  # backfill and swap in
            run_process(
                [*cli, "contact", "set", "c00000002", "job_title=" + "a" * 60], env, T, work
            )
            code, _, err, secs, peak = run_process([*cli, "stream", "--once"], env, T * 5, work)
            outcome, detail = classify_cli(code, err)
            record(Run("like-ongoing-all", "expr", "stream", outcome, secs, peak, detail))

        # the dispatcher: every dropped request file, in one --once pass
        members_before = count_rows(store_url, members)
        code, _, err, secs, peak = run_process(
            [*cli, "dispatcher", "--once", "--workers", "2"], env, max(T, 30) * 10, work
        )
        dispatcher_trace = "Traceback" in err
        print(
            f"dispatcher --once: exit {code}, {secs:.1f} s, peak {peak:.0f} MB, "
            f"traceback in its log: {dispatcher_trace}",
            flush=True,
        )
        succeeded = 0
        for rid, case in dropped.items():
            summary_path = results_dir / rid / "summary.json"
            if not summary_path.exists():
                # a refused file may get its summary under a derived id (fz-e1.2, fz-e1_x):
                # the id, then anything but a digit (fz-e10 is another case)
                found = [
                    p
                    for p in results_dir.glob(f"{rid}*/summary.json")
                    if not p.parent.name[len(rid) : len(rid) + 1].isdigit()
                ]
                summary_path = found[0] if found else summary_path
            if summary_path.exists():
                summary = json.loads(summary_path.read_text())
                status = summary.get("status")
                error = str(summary.get("error") or "")
                seconds = float((summary.get("timings") or {}).get("seconds") or 0)
                if status in ("succeeded", "partial"):
                    succeeded += 1
                    outcome, detail = "accepted", str(status)
                elif error and "Traceback" not in error and "\n" not in error.strip():
                    outcome, detail = "clean", f"{status}: {error[:140]}"
                else:
                    outcome, detail = "unclear", f"{status}: {error[:140]}"
            else:
                outcome, detail, seconds = "no-outcome", "no summary.json", 0.0
            record(Run(case.name, case.kind, "dispatcher", outcome, seconds, None, detail))
        members_after = count_rows(store_url, members)
        print(
            f"memberships of {PERSONA}: {members_before} -> {members_after} "
            f"({succeeded} requests succeeded)",
            flush=True,
        )
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server_log.close()

    server_log_text = (work / "serve.log").read_text(errors="replace")
    print(f"serve log: {server_log_text.count('Traceback')} tracebacks")
    table: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in runs:
        table[(r.kind, r.channel)][r.outcome] += 1
    outcomes = [
        "skipped",
        "clean",
        "accepted",
        "traceback",
        "5xx",
        "timeout",
        "no-outcome",
        "half-written",
        "unclear",
    ]
    print("\n| input | channel | runs | " + " | ".join(outcomes) + " | max s | max MB |")
    print("|---|---|---|" + "---|" * len(outcomes) + "---|---|")
    for (kind, channel), counts in sorted(table.items()):
        these = [r for r in runs if (r.kind, r.channel) == (kind, channel)]
        mb = [r.peak_mb for r in these if r.peak_mb is not None]
        most_mb = f"{max(mb):.0f}" if mb else "-"
        print(
            f"| {kind} | {channel} | {len(these)} | "
            + " | ".join(str(counts[o]) for o in outcomes)
            + f" | {max(r.seconds for r in these):.1f} | {most_mb} |"
        )
    total = Counter(r.outcome for r in runs)
    print(
        f"\n{len(runs)} runs of {len({r.case + r.kind for r in runs})} cases: "
        + ", ".join(f"{o} {total[o]}" for o in outcomes if total[o])
    )
    bad = [r for r in runs if r.outcome not in ("clean", "accepted", "skipped")]
    if bad:
        print("\nnot clean:")
        for r in bad:
            print(f"  {r.outcome:12} {r.kind}/{r.channel} {r.case}: {r.detail}")
    out = Path(str(work) + ".json")
    out.write_text(json.dumps([r.__dict__ for r in runs], indent=1, default=str, ensure_ascii=True))
    print(f"\nper-case results: {out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
