"""The Flink streaming job of the flink stream engine: ongoing evaluation on a cluster.

Runs inside Flink's Python client from the stream bundle (personatag plus
SQLAlchemy, which personatag.engines.local.stream.ongoing imports):

    flink run -d -m HOST:PORT -p N -pyfs personatag-stream-<hash>.zip \\
        -pym personatag.engines.flink.programs.stream_job SPEC.json

SPEC names the three staging folders and the timings:

    {"format": 1, "name": "personatag stream ...", "parallelism": 2,
     "rules": "/.../staging/stream/rules", "changes": "/.../staging/stream/changes",
     "results": "/.../staging/stream/results",
     "checkpoint_ms": 1000, "monitor_ms": 500,
     "restarts": 3, "restart_interval_ms": 600000, "restart_delay_ms": 2000}

Two continuously monitored file sources: rules lines go into broadcast state
(the newest complete generation is kept), work lines are evaluated with the
SAME compiled evaluator and `next_due` as the embedded processor
(personatag.engines.local.stream.ongoing.build), and one result line per (contact,
criterion) goes to a FileSink that rolls on checkpoints, so a result file
becomes visible only once the checkpoint that covers it has completed.

A work line whose rules generation the subtask does not hold yet gets
`retry` results (the engine writes it again); nothing is buffered in the job,
so a restore from a checkpoint can neither lose nor invent an answer.

A failure (a task manager lost, a subtask's exception) restarts the job from
its last completed checkpoint, at most `restarts` times within any
`restart_interval_ms` and `restart_delay_ms` after the failure (the cluster's
own default is no restart): the sources go back
to the files and offsets that checkpoint holds, the sink drops the results it
had not committed, so every answer still reaches the results folder once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from personatag.engines.flink import codec

SPEC_FORMAT = 1
ACTIVE = "active"


def _header_key(gen: int) -> str:
    return f"h:{gen}"


def _criterion_prefix(gen: int) -> str:
    return f"c:{gen}:"


def absorb_rule(state: Any, line: str) -> int | None:
    """Put one rules line into `state` (a dict-like broadcast state); returns the
    generation when this line completed one newer than the active one."""
    obj = json.loads(line)
    gen = int(obj["gen"])
    active = state.get(ACTIVE)
    if active is not None and gen <= int(active):
        return None  # an older generation, or a line read again after a restore
    if obj["kind"] == "generation":
        state.put(_header_key(gen), line)
    else:
        state.put(f"{_criterion_prefix(gen)}{int(obj['pk'])}", line)
    header = state.get(_header_key(gen))
    if header is None:
        return None
    prefix = _criterion_prefix(gen)
    keys = list(state.keys())  # broadcast state is not iterable itself
    have = sum(1 for k in keys if k.startswith(prefix))
    if have < int(json.loads(header)["criteria"]):
        return None
    # Complete: it becomes the active generation; older ones are dropped.
    for key in keys:
        if key == ACTIVE:
            continue
        if int(key.split(":")[1]) < gen:
            state.remove(key)
    state.put(ACTIVE, str(gen))
    return gen


def compile_generation(state: Any, gen: int) -> dict[int, Any]:
    """The active generation's criteria, compiled, by pk."""
    from personatag.engines.local.stream import ongoing

    header = json.loads(state.get(_header_key(gen)))
    catalog = codec.decode_catalog(header["catalog"])
    prefix = _criterion_prefix(gen)
    out: dict[int, Any] = {}
    for key in list(state.keys()):
        if not key.startswith(prefix):
            continue
        r = json.loads(state.get(key))
        try:
            out[int(r["pk"])] = ongoing.build(
                int(r["pk"]),
                r["name"],
                int(r["version"]),
                int(r["persona_pk"]),
                r["persona"],
                r["exit"],
                r["status"],
                r["ast"],
                catalog,
            )
        except Exception as exc:  # reported per evaluation, like a broken criterion
            out[int(r["pk"])] = exc
    return out


def evaluate_work(line: str, active: int | None, compiled: dict[int, Any]) -> Iterator[str]:
    """The result lines of one work line (see flink_codec)."""
    obj = json.loads(line)
    batch, gen, cpk = str(obj["batch"]), int(obj["gen"]), int(obj["contact"])
    crits = [int(p) for p in obj["criteria"]]
    if active != gen:
        msg = f"rules generation {gen} is not loaded in this subtask (it holds {active})"
        for pk in crits:
            yield codec.Result(batch, cpk, pk, False, None, msg, retry=True).line()
        return
    try:
        inp = codec.decode_input(obj["input"])
    except codec.CodecError as exc:
        for pk in crits:
            yield codec.Result(batch, cpk, pk, False, None, f"CodecError: {exc}").line()
        return
    for pk in crits:
        crit = compiled.get(pk)
        if crit is None:
            err = f"criterion pk {pk} is not in rules generation {gen}"
            yield codec.Result(batch, cpk, pk, False, None, err).line()
            continue
        if isinstance(crit, Exception):
            err = f"{type(crit).__name__}: {crit}"
            yield codec.Result(batch, cpk, pk, False, None, err).line()
            continue
        # Exactly StreamProcessor._eval_one.
        try:
            hit = crit.evaluate(inp) is True
            due = crit.next_due(inp, hit) if crit.windows else None
        except Exception as exc:
            yield codec.Result(batch, cpk, pk, False, None, f"{type(exc).__name__}: {exc}").line()
            continue
        yield codec.Result(batch, cpk, pk, hit, due).line()


class _DictState:
    """A dict with the broadcast-state methods (tests, and the read-only side)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.d = dict(items)

    def get(self, key: str) -> str | None:
        return self.d.get(key)

    def put(self, key: str, value: str) -> None:
        self.d[key] = value

    def remove(self, key: str) -> None:
        self.d.pop(key, None)

    def keys(self) -> list[str]:
        return list(self.d)


def main(argv: list[str]) -> int:
    from pyflink.common import Configuration, Duration, Encoder, Types, WatermarkStrategy
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.file_system import (
        BucketAssigner,
        FileSink,
        FileSource,
        OutputFileConfig,
        RollingPolicy,
        StreamFormat,
    )
    from pyflink.datastream.functions import BroadcastProcessFunction
    from pyflink.datastream.state import MapStateDescriptor

    if len(argv) != 2:
        print(
            "usage: python -m personatag.engines.flink.programs.stream_job SPEC.json",
            file=sys.stderr,
        )
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"stream job spec format {spec.get('format')!r} is not {SPEC_FORMAT}")

    rules_desc = MapStateDescriptor("personatag-rules", Types.STRING(), Types.STRING())

    class Evaluate(BroadcastProcessFunction):  # type: ignore[misc]
        def open(self, runtime_context: Any) -> None:
            self.subtask = runtime_context.get_index_of_this_subtask()
            self.gen: int | None = None
            self.compiled: dict[int, Any] = {}

        # The compiled generation lives in this instance; the broadcast state
        # (checkpointed) is read only after a (re)start, not per element.
        def process_element(self, value: str, ctx: Any) -> Iterator[str]:
            if self.gen is None:
                state = ctx.get_broadcast_state(rules_desc)
                active = state.get(ACTIVE)
                if active is not None:
                    self.compiled = compile_generation(state, int(active))
                    self.gen = int(active)
            yield from evaluate_work(value, self.gen, self.compiled)

        def process_broadcast_element(self, value: str, ctx: Any) -> Iterator[str]:
            state = ctx.get_broadcast_state(rules_desc)
            done = absorb_rule(state, value)
            if done is not None:
                self.compiled = compile_generation(state, done)
                self.gen = done
                yield codec.dumps({"ack": done, "subtask": self.subtask})

    conf = Configuration()
    restarts = int(spec.get("restarts", 0))
    if restarts > 0:
        # A rate, not a lifetime count: a job that runs for months may lose a
        # task manager now and then; one that keeps failing stops.
        conf.set_string("restart-strategy.type", "failure-rate")
        conf.set_string("restart-strategy.failure-rate.max-failures-per-interval", str(restarts))
        conf.set_string(
            "restart-strategy.failure-rate.failure-rate-interval",
            f"{int(spec.get('restart_interval_ms', 600_000))} ms",
        )
        conf.set_string(
            "restart-strategy.failure-rate.delay", f"{int(spec.get('restart_delay_ms', 2000))} ms"
        )
    else:
        conf.set_string("restart-strategy.type", "none")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(int(spec.get("parallelism") or 1))
    env.enable_checkpointing(int(spec["checkpoint_ms"]))
    monitor = Duration.of_millis(int(spec["monitor_ms"]))

    def source(path: str, name: str) -> Any:
        src = (
            FileSource.for_record_stream_format(StreamFormat.text_line_format(), path)
            .monitor_continuously(monitor)
            .build()
        )
        ds = env.from_source(src, WatermarkStrategy.no_watermarks(), name)
        return ds.uid(f"{name}-source").set_parallelism(1)

    # Fixed uids: a savepoint of this job restores into the same code at
    # another parallelism (the engine rescales the job that way).
    rules = source(spec["rules"], "rules").broadcast(rules_desc)
    work = source(spec["changes"], "changes").rebalance()
    results = (
        work.connect(rules)
        .process(Evaluate(), output_type=Types.STRING())
        .name("evaluate")
        .uid("evaluate")
    )
    sink = (
        FileSink.for_row_format(spec["results"], Encoder.simple_string_encoder())
        .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .with_output_file_config(
            OutputFileConfig.builder().with_part_prefix("res").with_part_suffix(".jsonl").build()
        )
        .build()
    )
    results.sink_to(sink).name("results").uid("results")
    client = env.execute_async(str(spec["name"]))
    print(f"PERSONATAG_FLINK_JOB_ID={client.get_job_id()}", flush=True)
    return 0


if __name__ == "__main__":
    # Run the imported module's main: its functions then pickle by reference
    # (the workers import them from the bundle), not by value from __main__.
    from personatag.engines.flink.programs.stream_job import main as _main

    sys.exit(_main(sys.argv))
