"""JSON Schemas of the files people and other systems hand to personatag.

A format is defined once, as a pydantic model (with messages for people); its
JSON Schema is generated from the model and committed next to this file, so
other systems can check their files without running personatag. Parsing the
files (and turning errors into messages) is `personatag.requests.files`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError

from personatag.domain import PERSONA_KEY_RE, TimestampRangeError, check_as_of, parse_timestamp
from personatag.errors import InputError

REQUEST_V1 = "request-v1.schema.json"
SOURCES = ("criterion", "expr", "contacts")  # a request gives exactly one of these

# These patterns go into the JSON Schema as they are and the parser applies the
# same strings (re.fullmatch for anchored ones), so schema and parser agree.
# Python's `$` also matches before a final newline (and Python validators use
# `re`): `(?!\n)$` is the end of the text in Python and ECMA-262 regexes alike.
# A request id names a folder in the results bucket: no '/', no '..', no spaces.
REQUEST_ID_PATTERN = r"^(?!\.$)(?!.*\.\.)[A-Za-z0-9._:-]{1,128}(?!\n)$"
KEY_PATTERN = PERSONA_KEY_RE.pattern.removesuffix("$") + r"(?!\n)$"
NOT_BLANK_PATTERN = r"\S"
NO_NUL_PATTERN = "^[^\\u0000]*$"
_REQUEST_ID_CHAR = re.compile(r"[A-Za-z0-9._:-]")
_KEY_RULE = 'use lowercase letters, digits, "_", "." or "-", starting with a letter or digit'


def load_schema(name: str = REQUEST_V1) -> dict[str, Any]:
    """The committed schema file `name`, parsed."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _fail(reason: str) -> PydanticCustomError:
    # The reason travels in the context: user text in a message template could
    # contain braces.
    return PydanticCustomError("request_value", "{reason}", {"reason": reason})


def show_value(value: Any) -> str:
    """A JSON value as people read it in a message, shortened."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def request_id_problem(value: str) -> str | None:
    """Why `value` cannot be a request id, or None when it can."""
    if not value:
        return "must not be empty"
    if len(value) > 128:
        return f"is {len(value)} characters long; the limit is 128"
    bad = sorted({ch for ch in value if not _REQUEST_ID_CHAR.fullmatch(ch)})
    if bad:
        shown = ", ".join(json.dumps(ch, ensure_ascii=False) for ch in bad)
        return (
            f"{show_value(value)} has characters that are not allowed ({shown}): "
            'use letters, digits, ".", "_", ":" and "-"'
        )
    if ".." in value or value == ".":
        return f'{show_value(value)} must not be "." or contain "..": it names a results folder'
    return (
        None if re.fullmatch(REQUEST_ID_PATTERN, value) else f"{show_value(value)} is not allowed"
    )


def key_problem(value: str, what: str) -> str | None:
    """Why `value` cannot be a persona key (or criterion name), or None when it can."""
    if re.fullmatch(KEY_PATTERN, value):
        return None
    if len(value) > 100:
        shown = show_value(value)
        return f"{shown} is not a {what}: it is {len(value)} characters long, the limit is 100"
    return f"{show_value(value)} is not a {what}: {_KEY_RULE}"


def _no_nul(value: str) -> str:
    if not re.fullmatch(NO_NUL_PATTERN, value):
        raise _fail("contains a NUL character")
    return value


def _present(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def _schema_extra(schema: dict[str, Any]) -> None:
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["oneOf"] = [_present(name) for name in SOURCES]
    # A criterion names its persona; everything else needs one.
    schema["anyOf"] = [_present("criterion"), _present("persona")]
    items = schema["properties"]["contacts"]["anyOf"][0]["items"]
    items["pattern"] = NO_NUL_PATTERN


def _pattern(pattern: str, **extra: Any) -> Any:
    return Field(json_schema_extra={"pattern": pattern}, **extra)


class RequestV1(BaseModel):
    """A request data file, version 1 (JSON). Exactly one of criterion, expr, contacts."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        title="personatag request, version 1",
        json_schema_extra=_schema_extra,
    )

    version: Literal[1] = Field(description="format version; only 1 exists")
    request_id: str | None = _pattern(
        REQUEST_ID_PATTERN,
        default=None,
        description="idempotency key and results folder name; generated when absent",
    )
    submitted_by: str | None = Field(None, description="who asked, for the audit log")
    persona: str | None = _pattern(
        KEY_PATTERN,
        default=None,
        description="persona key; may be left out only with criterion",
    )
    action: Literal["tag", "untag"] = Field("tag", description="tag or untag the matches")
    engine: str = _pattern(
        NOT_BLANK_PATTERN,
        default=None,
        description="engine name (local, columnar, flink, or a plugin's); "
        "absent: the dispatcher's batch_engine setting",
    )
    dry_run: bool = Field(False, description="count only; change nothing")
    criterion: str | None = _pattern(
        KEY_PATTERN, default=None, description="run the newest version of a criterion"
    )
    expr: str | None = _pattern(
        NOT_BLANK_PATTERN, default=None, description="a criteria-language expression"
    )
    contacts: list[Annotated[str, AfterValidator(_no_nul)]] | None = Field(
        None, json_schema_extra={"minItems": 1}, description="explicit contact ids"
    )
    as_of: str | None = Field(
        None, description="ISO-8601 time windows are measured back from (default: now)"
    )

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str | None) -> str | None:
        problem = None if value is None else request_id_problem(value)
        if problem:
            raise _fail(problem)
        return value

    @field_validator("persona", "criterion")
    @classmethod
    def _key(cls, value: str | None, info: ValidationInfo) -> str | None:
        what = "persona key" if info.field_name == "persona" else "criterion name"
        problem = None if value is None else key_problem(value, what)
        if problem:
            raise _fail(problem)
        return value

    @field_validator("engine", "expr")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not re.search(NOT_BLANK_PATTERN, value):
            raise _fail("must not be empty")
        return value

    @field_validator("contacts")
    @classmethod
    def _contacts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise _fail("must list at least one contact id")
        return value

    @field_validator("as_of")
    @classmethod
    def _as_of(cls, value: str | None) -> str | None:
        if value is not None:
            as_of_time(value)
        return value


def as_of_time(value: str) -> datetime:
    """Parse and range-check an as-of time (a pydantic error when it is unusable)."""
    try:
        parsed = parse_timestamp(value)
    except TimestampRangeError:  # a time near year 1 or 9999 moved to UTC
        raise _fail(f"{show_value(value)} is out of range: use a time from 1900 to 8999") from None
    except ValueError:
        raise _fail(
            f"{show_value(value)} is not an ISO-8601 time (e.g. 2026-06-30T12:00:00Z)"
        ) from None
    try:
        return check_as_of(parsed)
    except InputError as exc:
        raise _fail(str(exc)) from None


class _SchemaWithoutTitles(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def request_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the version 1 JSON format."""
    return RequestV1.model_json_schema(schema_generator=_SchemaWithoutTitles)


def write_request_schema(path: Path | None = None) -> Path:
    """Regenerate the committed schema file (after changing RequestV1)."""
    path = path or Path(__file__).resolve().parent / REQUEST_V1
    path.write_text(json.dumps(request_json_schema(), indent=2) + "\n", encoding="utf-8")
    return path
