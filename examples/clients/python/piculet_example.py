"""A piculet client in Python: the package openapi-python-client generates from
openapi/openapi.json (`piculet_client`), and httpx-sse for the event streams.

It submits pipelines as YAML and as JSON, polls them, lists them by label page by page, cancels
one, retries one, reads a step's log as text, as JSON lines and live, and follows a pipeline's
events. Every answer is checked: the program exits 1 at the first that differs from what the
API promises, so scripts/clients.sh runs it as a test.

    PICULET_SERVER=http://127.0.0.1:8080 PICULET_TOKEN=... python piculet_example.py

PICULET_TOKEN is needed only when the server has PICULET_API_TOKENS.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from piculet_client import AuthenticatedClient, Client
from piculet_client.api.logs import get_step_logs
from piculet_client.api.pipelines import (
    cancel_pipeline,
    create_pipeline,
    get_pipeline,
    lint_pipeline,
    list_pipelines,
    retry_pipeline,
)
from piculet_client.models import (
    ConfigFile,
    Event,
    LintResult,
    LogEnd,
    LogLine,
    Pipeline,
    PipelineEnd,
    PipelinePage,
    Problem,
    SecretValue,
    Status,
    Submission,
    SubmissionLabels,
    SubmissionVariables,
)
from piculet_client.types import File, Response, Unset

SERVER = os.environ.get("PICULET_SERVER", "http://127.0.0.1:8080")
TOKEN = os.environ.get("PICULET_TOKEN", "")
# Every request and every wait is bounded: a server that stops answering fails the program
# instead of hanging it. Streams send a keep-alive every 15 s, so 30 s of silence is a fault.
TIMEOUT = httpx.Timeout(30.0)
DEADLINE_SECONDS = 60.0
FINISHED = {Status.SUCCESS, Status.FAILURE, Status.CANCELED, Status.ERROR, Status.SKIPPED}

HELLO_YAML = b"""\
steps:
  - name: hello
    image: alpine
    commands:
      - echo "hello from $CI_STEP_NAME"
      - for i in 1 2 3; do echo "tick $i"; sleep 0.2; done
"""

T = TypeVar("T")
# A server with tokens needs an AuthenticatedClient; every operation takes either.
AnyClient = AuthenticatedClient | Client


class Mismatch(Exception):
    """An answer that differs from what the API promises."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


def expect(response: Response[Any], status: int, kind: type[T]) -> T:
    """The parsed body of an answer with this status, or a Mismatch naming the problem."""
    parsed = response.parsed
    if response.status_code != status or not isinstance(parsed, kind):
        detail = parsed.detail if isinstance(parsed, Problem) else response.content[:300]
        raise Mismatch(f"expected {status}, got {int(response.status_code)}: {detail!r}")
    return parsed


def log(message: str) -> None:
    print(f"python: {message}", flush=True)


def connect(headers: dict[str, str] | None = None) -> AnyClient:
    """A client of the server. A tokenless server needs no token (the document's security
    makes it optional); with one, every request carries it. `headers` go with every request
    (a client's httpx client is shared by its copies, so a different Accept needs its own)."""
    if TOKEN:
        return AuthenticatedClient(
            base_url=SERVER, token=TOKEN, timeout=TIMEOUT, headers=headers or {}
        )
    return Client(base_url=SERVER, timeout=TIMEOUT, headers=headers or {})


def wait_until(
    client: AnyClient, pipeline_id: uuid.UUID, done: Callable[[Pipeline], bool], what: str
) -> Pipeline:
    """Polls the pipeline, twice a second, until `done` holds or the deadline passes."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        pipeline = expect(get_pipeline.sync_detailed(pipeline_id, client=client), 200, Pipeline)
        if done(pipeline):
            return pipeline
        if time.monotonic() > deadline:
            raise Mismatch(
                f"pipeline {pipeline_id} still {pipeline.status} after "
                f"{DEADLINE_SECONDS:.0f} s, waiting for {what}"
            )
        time.sleep(0.5)


def sse(
    client: AnyClient, path: str, last_event_id: int | None = None
) -> Iterator[ServerSentEvent]:
    """The events of a stream, through the generated client's own httpx client (its base URL,
    token and timeout), until the server ends the stream."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    with connect_sse(client.get_httpx_client(), "GET", path, headers=headers) as source:
        source.response.raise_for_status()
        yield from source.iter_sse()


def follow_events(client: AnyClient, pipeline_id: uuid.UUID) -> tuple[list[Event], PipelineEnd]:
    """Every state change of a pipeline, then its `end` event."""
    changes: list[Event] = []
    for event in sse(client, f"/api/v1/pipelines/{pipeline_id}/events"):
        if event.event == "status":
            changes.append(Event.from_dict(json.loads(event.data)))
            check(event.id == str(changes[-1].seq), "a status event's id is its seq")
        elif event.event == "end":
            return changes, PipelineEnd.from_dict(json.loads(event.data))
        else:
            raise Mismatch(f"unexpected event {event.event!r} in a pipeline's stream")
    raise Mismatch("the event stream ended without an end event")


def follow_log(
    client: AnyClient, step_id: uuid.UUID, last_event_id: int | None = None
) -> tuple[list[LogLine], LogEnd]:
    """A step's log lines as they come, then its `end` event."""
    lines: list[LogLine] = []
    for event in sse(client, f"/api/v1/steps/{step_id}/logs", last_event_id):
        if event.event == "message":
            lines.append(LogLine.from_dict(json.loads(event.data)))
            check(event.id == str(lines[-1].number), "a log event's id is its line number")
        elif event.event == "end":
            return lines, LogEnd.from_dict(json.loads(event.data))
        else:
            raise Mismatch(f"unexpected event {event.event!r} in a log stream")
    raise Mismatch("the log stream ended without an end event")


def submission(name: str, script: str, labels: dict[str, str]) -> Submission:
    config = f"steps:\n  - name: run\n    image: alpine\n    commands: [{json.dumps(script)}]\n"
    return Submission(
        name=name,
        configs=[ConfigFile(name="build", content=config)],
        labels=SubmissionLabels.from_dict(labels),
    )


def first_step(pipeline: Pipeline) -> uuid.UUID:
    return pipeline.workflows[0].steps[0].id


def main() -> None:
    client = connect()
    run = str(uuid.uuid4())  # labels this run's pipelines apart from any others on the server

    # A pipeline file, sent as the YAML it is: linted, then submitted.
    lint = expect(
        lint_pipeline.sync_detailed(client=client, body=File(payload=io.BytesIO(HELLO_YAML))),
        200,
        LintResult,
    )
    check(lint.valid and not lint.errors, f"the YAML lints clean: {lint.errors}")
    hello = expect(
        create_pipeline.sync_detailed(client=client, body=File(payload=io.BytesIO(HELLO_YAML))),
        201,
        Pipeline,
    )
    check(hello.workflows[0].steps[0].name == "hello", "the YAML's step is planned")
    log(f"linted and submitted YAML: pipeline {hello.id} ({hello.status})")

    # Its state changes, live, until it ends.
    changes, end = follow_events(client, hello.id)
    check(end.status == Status.SUCCESS, f"hello ended {end.status}")
    check([e.seq for e in changes] == sorted({e.seq for e in changes}), "events in seq order")
    check(
        any(e.name == "hello" and e.status == Status.SUCCESS for e in changes),
        "the step's success is an event",
    )
    log(f"followed {len(changes)} events, then end: {end.status}")

    # Its step's log: live, resumed after line 2, as text, and as JSON lines.
    step = first_step(hello)
    lines, log_end = follow_log(client, step)
    texts = [line.text for line in lines]  # each with its own line ending, as printed
    check(
        "hello from hello\n" in texts and "tick 3\n" in texts, f"the log holds the output: {texts}"
    )
    check(log_end.status == Status.SUCCESS and log_end.exit_code == 0, "the log's end event")
    resumed, _ = follow_log(client, step, last_event_id=2)
    check(
        [line.number for line in resumed] == [line.number for line in lines if line.number > 2],
        "Last-Event-ID resumes right after that line",
    )
    text = get_step_logs.sync(step, client=client)
    check(text == "".join(texts), "the text log is the same lines, byte for byte")
    # The format is chosen by Accept, which OpenAPI cannot express as a parameter: a client
    # with that default header asks for JSON lines.
    ndjson = get_step_logs.sync(step, client=connect({"Accept": "application/x-ndjson"}), after=1)
    check(isinstance(ndjson, str), "JSON lines are text")
    stored = [LogLine.from_dict(json.loads(row)) for row in str(ndjson).splitlines()]
    check([line.text for line in stored] == texts[1:], "JSON lines after line 1")
    log(
        f"log: {len(lines)} lines live, {len(resumed)} after Last-Event-ID 2, "
        f"{len(stored)} JSON lines after 1"
    )

    # A JSON submission with a secret, variables and an idempotency key, sent twice: the second
    # answer is the pipeline of the first. Then polled until it ends.
    body = Submission(
        name="python json",
        configs=[
            ConfigFile(
                name="build",
                content=(
                    "steps:\n  - name: run\n    image: alpine\n    commands:\n"
                    '      - echo "branch $CI_COMMIT_BRANCH, token $TOKEN"\n'
                    "    environment:\n      TOKEN:\n        from_secret: token\n"
                ),
            )
        ],
        variables=SubmissionVariables.from_dict({"CI_COMMIT_BRANCH": "main"}),
        secrets=[SecretValue(name="token", value="s3cr3t-value")],
        labels=SubmissionLabels.from_dict({"run": run}),
        timeout="5m",
    )
    key = f"python-{run}"
    first = expect(
        create_pipeline.sync_detailed(client=client, body=body, idempotency_key=key), 201, Pipeline
    )
    again = create_pipeline.sync_detailed(client=client, body=body, idempotency_key=key)
    check(expect(again, 201, Pipeline).id == first.id, "the idempotency key answers the same")
    check(again.headers.get("Idempotent-Replayed") == "true", "the replay is said")
    done = wait_until(client, first.id, lambda p: p.status in FINISHED, "the end")
    check(done.status == Status.SUCCESS, f"the JSON pipeline ended {done.status}")
    output = get_step_logs.sync(first_step(done), client=client)
    check(
        isinstance(output, str)
        and "branch main, token ********" in output
        and "s3cr3t-value" not in output,
        f"the secret is masked: {output!r}",
    )
    log(
        f"submitted JSON twice with one Idempotency-Key: pipeline {first.id}, polled: {done.status}"
    )

    # Two more with the run's label, one of them with a second label; then the run's pipelines,
    # two to a page, newest first.
    second = expect(
        create_pipeline.sync_detailed(
            client=client, body=submission("python second", "true", {"run": run})
        ),
        201,
        Pipeline,
    )
    third = expect(
        create_pipeline.sync_detailed(
            client=client, body=submission("python third", "true", {"run": run, "which": "third"})
        ),
        201,
        Pipeline,
    )
    page = expect(
        list_pipelines.sync_detailed(client=client, label=[f"run={run}"], limit=2),
        200,
        PipelinePage,
    )
    check([p.id for p in page.items] == [third.id, second.id], "page 1 is the newest two")
    cursor = page.next_cursor
    if not isinstance(cursor, uuid.UUID):
        raise Mismatch(f"page 1 has no next_cursor: {cursor!r}")
    last = expect(
        list_pipelines.sync_detailed(client=client, label=[f"run={run}"], limit=2, cursor=cursor),
        200,
        PipelinePage,
    )
    check([p.id for p in last.items] == [first.id], "page 2 is the oldest")
    check(last.next_cursor is None or isinstance(last.next_cursor, Unset), "page 2 is the last")
    both = expect(
        list_pipelines.sync_detailed(client=client, label=[f"run={run}", "which=third"]),
        200,
        PipelinePage,
    )
    check([p.id for p in both.items] == [third.id], "two labels: both must match")
    log("listed by label, 2 a page: 2 + 1 pipelines; by two labels: 1")

    # A long pipeline, polled until its step runs, then canceled; its log stream ends canceled.
    slow = expect(
        create_pipeline.sync_detailed(
            client=client, body=submission("python slow", "sleep 120", {"run": run})
        ),
        201,
        Pipeline,
    )
    wait_until(
        client,
        slow.id,
        lambda p: p.workflows[0].steps[0].status == Status.RUNNING,
        "its step to run",
    )
    canceled = expect(cancel_pipeline.sync_detailed(slow.id, client=client), 200, Pipeline)
    check(canceled.id == slow.id, "cancel answers the pipeline")
    stopped = wait_until(client, slow.id, lambda p: p.status in FINISHED, "the cancel")
    check(stopped.status == Status.CANCELED, f"the canceled pipeline ended {stopped.status}")
    _, slow_end = follow_log(client, first_step(slow))
    check(slow_end.status == Status.CANCELED, f"the log's end says {slow_end.status}")
    log(f"canceled a running pipeline: {stopped.status}")

    # A retry of the YAML pipeline: a new pipeline from the same submission.
    retried = expect(retry_pipeline.sync_detailed(hello.id, client=client), 201, Pipeline)
    check(retried.id != hello.id and retried.retry_of == hello.id, "retry_of names the original")
    again_done = wait_until(client, retried.id, lambda p: p.status in FINISHED, "the retry's end")
    check(again_done.status == Status.SUCCESS, f"the retry ended {again_done.status}")
    log(f"retried: pipeline {retried.id} ({again_done.status})")

    # Errors are problem details, parsed into the generated Problem.
    missing = get_pipeline.sync_detailed(uuid.uuid4(), client=client)
    check(
        missing.status_code == 404
        and isinstance(missing.parsed, Problem)
        and missing.parsed.type_ == "urn:piculet:problem:not-found",
        "404 is a problem",
    )
    log("a missing pipeline: 404 urn:piculet:problem:not-found")


if __name__ == "__main__":
    try:
        main()
    except (Mismatch, httpx.HTTPError) as error:
        print(f"python: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
    print("python: all checks passed")
