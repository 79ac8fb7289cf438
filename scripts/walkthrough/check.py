#!/usr/bin/env python3
"""Runs the README's curl walkthrough and CLI examples as they are written, and checks every
answer against what the README says of it.

The commands are taken from README.md itself (the ```sh blocks of "Try it with curl" and "The
CLI as a client"), so the README cannot drift from what piculet does: each command is paired,
in order, with an expectation below that first recognises the command and then checks its
status code, headers, fields, output and exit code. A command added, removed or changed in the
README without its expectation here fails the run, and so does an expectation left without its
command.

Only two things are changed in the text before it runs: the README's server address
(http://127.0.0.1:8080) becomes the test server's, and `list --watch`, which runs until Ctrl-C,
gets Ctrl-C (SIGINT) after WATCH_SECONDS. The CLI reaches the test server through
PICULET_SERVER; `piculet` is the freshly built binary, first on PATH.

Usage: check.py README BASE_URL WORK_DIR   (scripts/walkthrough.sh starts the server)
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request

README_BASE = "http://127.0.0.1:8080"
SECTIONS = ("Try it with curl", "The CLI as a client")
# The longest the whole walkthrough may take (it needs about 15 s); a hung command fails it.
TOTAL_TIMEOUT = 120
# How long `piculet list --watch` watches before it gets its Ctrl-C.
WATCH_SECONDS = 3
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Failed(Exception):
    pass


def ensure(condition, message):
    if not condition:
        raise Failed(message)


# --- README → commands ------------------------------------------------------------------------


def sh_blocks(readme):
    """The ```sh blocks of the SECTIONS, in order."""
    blocks, section, inside, block = [], None, False, []
    for line in readme.split("\n"):
        if not inside and line.startswith("## "):
            section = line[3:].strip()
        elif not inside and line.strip() == "```sh":
            inside, block = True, []
        elif inside and line.strip() == "```":
            inside = False
            if section in SECTIONS:
                blocks.append(block)
        elif inside:
            block.append(line)
    for name in SECTIONS:
        ensure(f"## {name}" in readme, f"README has no section '## {name}'")
    return blocks


def complete(text):
    """Whether text is whole shell words: no open quote, no continuation backslash."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
        return True
    except ValueError:
        return False


def commands(block):
    """A block's commands, each with the comment lines just above it. A command runs over
    continuation lines, an open quote, or a heredoc."""
    out, comment, lines, i = [], [], block, 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            comment = []
            i += 1
            continue
        if line.lstrip().startswith("#"):
            comment.append(line.lstrip("# ").rstrip())
            i += 1
            continue
        text = [line]
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)", line)
        if heredoc:
            end = heredoc.group(1)
            i += 1
            while i < len(lines) and lines[i].strip() != end:
                text.append(lines[i])
                i += 1
            ensure(i < len(lines), f"heredoc {end} is not closed in the README")
            text.append(lines[i])
        else:
            while not complete("\n".join(text)):
                i += 1
                ensure(i < len(lines), f"command never ends: {text[0]}")
                text.append(lines[i])
        out.append({"text": "\n".join(text), "comment": " ".join(comment)})
        comment = []
        i += 1
    return out


# --- answers -----------------------------------------------------------------------------------


def http(out):
    """A `curl -i` answer: (status, headers with lower-case names, body)."""
    head, sep, body = out.partition("\r\n\r\n")
    ensure(sep, f"no HTTP head in the answer: {out[:200]!r}")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def as_json(body, what):
    ensure(body.endswith("\n"), f"{what}: the answer does not end with a newline: {body[-80:]!r}")
    try:
        return json.loads(body)
    except ValueError as e:
        raise Failed(f"{what}: not JSON ({e}): {body[:300]!r}")


def sse(body):
    """Server-Sent Events: a list of (event, data); comments skipped."""
    events = []
    for chunk in body.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in chunk.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


def created(r, what):
    status, headers, body = http(r["out"])
    ensure(status == 201, f"{what}: expected 201 Created, got {status}")
    p = as_json(body, what)
    ensure(UUID.match(p.get("id", "")), f"{what}: no id in {body[:200]}")
    location = headers.get("location")
    ensure(location == f"/api/v1/pipelines/{p['id']}",
           f"{what}: Location is {location!r}, not the pipeline's /api/v1/pipelines/{p['id']}")
    return p, headers


# --- what the README says of each command, in its order ----------------------------------------
# Each: (pattern the command must match, check). A check gets the run of the command
# (out, err, rc, vars) and the state of the walkthrough so far.


def ok_quiet(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")


def submit_yaml(r, s):
    p, _ = created(r, "the YAML submission")
    ensure(p["status"] == "queued", f"the new pipeline is {p['status']}, the text says queued")
    # "two runs at once do not collide": the same submission again, while the first runs.
    again, _ = created(run_one(s, r["cmd"], "again"), "the YAML submission sent again")
    for pipeline_id in (p["id"], again["id"]):
        final = wait_finished(s, pipeline_id)
        ensure(final["status"] == "success", f"a run of .woodpecker.yaml ended {final['status']}")


def submit_json(r, s):
    p, _ = created(r, "the JSON submission")
    ensure(p["name"] == "acme/api #42", f"name {p['name']!r}")
    ensure(p["labels"] == {"project": "acme/api"}, f"labels {p['labels']}")
    s["acme"] = p["id"]
    # "Sent again with the same Idempotency-Key, it answers the pipeline created the first
    # time, with Idempotent-Replayed: true": sent again, the same text.
    again = run_one(s, r["cmd"], "replay")
    p2, headers = created(again, "the JSON submission sent again")
    ensure(p2["id"] == p["id"], "sent again, it made a new pipeline")
    ensure(headers.get("idempotent-replayed") == "true",
           f"sent again, Idempotent-Replayed is {headers.get('idempotent-replayed')!r}")


def list_running(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    page = as_json(r["out"], "the list")
    ids = [p["id"] for p in page["items"]]
    ensure(ids == [s["acme"]], f"expected just the JSON submission, still running; got {page}")
    ensure(page["items"][0]["status"] in ("queued", "running"), page["items"][0]["status"])
    ensure(page["next_cursor"] is None, "next_cursor on the last page")


def id_of_acme(r, s):
    ok_quiet(r, s)
    ensure(r["vars"]["ID"] == s["acme"], f"ID is {r['vars']['ID']!r}, not the labelled pipeline")


def get_one(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    p = as_json(r["out"], "the pipeline")
    ensure(p["id"] == s["acme"], "another pipeline")
    steps = [st["name"] for w in p["workflows"] for st in w["steps"]]
    ensure(steps == ["test"], f"steps {steps}")


def cancel(r, s):
    status, _, body = http(r["out"])
    ensure(status == 200, f"cancel answered {status}")
    p = as_json(body, "the cancel")
    ensure(p["id"] == s["acme"], "another pipeline")
    # "its running step is stopped and the pipeline ends canceled"
    final = wait_finished(s, s["acme"])
    ensure(final["status"] == "canceled", f"the canceled pipeline ended {final['status']}")


def lint(r, s):
    status, _, body = http(r["out"])
    ensure(status == 200, f"lint answered {status}")
    report = as_json(body, "lint")
    ensure(report.get("valid") is True and report.get("errors") == []
           and isinstance(report.get("warnings"), list), f"lint report {report}")


def render(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    rendered = as_json(r["out"], "render")
    kinds = {o["kind"] for w in rendered["workflows"] for o in w["objects"]}
    ensure("Pod" in kinds, f"rendered kinds {kinds}")


def hello_submit(r, s):
    ok_quiet(r, s)


def var_uuid(name):
    def check(r, s):
        ok_quiet(r, s)
        ensure(UUID.match(r["vars"][name]), f"{name} is {r['vars'][name]!r}, not an id")
        s[name] = r["vars"][name]
    return check


def pipeline_events(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    events = sse(r["out"])
    ensure(events and events[-1][0] == "end", f"the stream does not end with end: {events[-3:]}")
    ensure(json.loads(events[-1][1])["status"] == "success", events[-1][1])
    subjects = {json.loads(d).get("subject") for e, d in events[:-1]}
    ensure({"pipeline", "workflow", "step"} <= subjects, f"state changes of {subjects}")


HELLO_LINES = ["hello from hello\n", "tick 1\n", "tick 2\n", "tick 3\n"]


def log_sse(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    events = sse(r["out"])
    ensure(events and events[-1][0] == "end", "no end event")
    texts = [json.loads(d)["text"] for e, d in events[:-1]]
    ensure(all(line in texts for line in HELLO_LINES), f"lines {texts}")


def log_text(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    ensure(r["out"].endswith("tick 3\n") and "hello from hello\n" in r["out"], r["out"])


def log_ndjson(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    lines = [json.loads(line) for line in r["out"].splitlines()]
    ensure([line["number"] for line in lines] == list(range(1, len(lines) + 1)), "numbers")
    ensure(all(t in [line["text"] for line in lines] for t in HELLO_LINES), "texts")


def retry(r, s):
    p, _ = created(r, "the retry")
    ensure(p["retry_of"] == s["ID"], f"retry_of {p['retry_of']}, not {s['ID']}")


def follow_hello(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']} (success is 0)")
    ensure(re.search(r"hello.*hello from hello", r["out"]), f"stdout {r['out']!r}")
    ensure(re.search(r"✓ hello success in [0-9.]+m?s", r["err"]), f"stderr {r['err']!r}")


def cli_events(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    for name in ("build", "test", "hello", "success"):
        ensure(name in r["out"], f"{name} not in the events: {r['out']!r}")


def cli_list(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    rows = r["out"].strip().split("\n")
    ensure(len(rows) == 2 and s["ID"] in rows[1] and "acme #42" in rows[1]
           and "success" in rows[1], f"expected a header and the acme pipeline: {r['out']!r}")


def cli_status(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    for name in ("build", "test", "hello", "web", "success"):
        ensure(name in r["out"], f"{name} not in status: {r['out']!r}")


def exit_status(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}, the text says 0 for success")


def cli_logs(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    ensure(r["out"].strip(), "no log")


def cli_cancel(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}")
    ensure(r["out"] == f"{s['ID']}: canceled\n", f"stdout {r['out']!r}")
    ensure(r["err"] in ("", f"piculet: {s['ID']}: canceling\n"), f"stderr {r['err']!r}")


def cli_retry(r, s):
    follow_hello(r, s)


def cli_watch(r, s):
    ensure(r["rc"] == 124, f"exit code {r['rc']}: list --watch ended before its Ctrl-C")
    rows = r["out"].strip().split("\n")
    ensure(len(rows) >= 2 and "ID" in rows[0].upper(), f"no table: {r['out']!r}")


def lint_ok(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}: {r['err']}")


def render_restricted(r, s):
    ensure(r["rc"] == 0, f"exit code {r['rc']}: {r['err']}")
    ensure("kind: Pod" in r["out"] and "runAsNonRoot: true" in r["out"], r["out"][:300])


EXPECTED = [
    (r'^cd "\$\(mktemp -d\)"', ok_quiet),
    (r"^cat > \.woodpecker\.yaml <<'EOF'", ok_quiet),
    (r"^curl -i .*/api/v1/pipelines .*application/yaml", submit_yaml),
    (r"^curl -i .*/api/v1/pipelines .*Idempotency-Key", submit_json),
    (r"^curl -sS '.*/api/v1/pipelines\?status=queued,running&label=project=acme/api", list_running),
    (r"^ID=\$\(curl .*label=project=acme/api&limit=1", id_of_acme),
    (r"^curl -sS .*/api/v1/pipelines/\$ID$", get_one),
    (r"^curl -i .*/api/v1/pipelines/\$ID/cancel$", cancel),
    (r"^curl -i .*/api/v1/lint ", lint),
    (r"^curl -sS .*/api/v1/render ", render),
    (r"^cat > hello\.yaml <<'YAML'", ok_quiet),
    (r"^P=\$\(curl .*/api/v1/pipelines .*@hello\.yaml\)$", hello_submit),
    (r'^ID=\$\(echo "\$P"', var_uuid("ID")),
    (r'^STEP=\$\(echo "\$P"', var_uuid("STEP")),
    (r"^curl .*text/event-stream.*/api/v1/pipelines/\$ID/events$", pipeline_events),
    (r"^curl .*text/event-stream.*/api/v1/steps/\$STEP/logs$", log_sse),
    (r"^curl -sS [^-]*/api/v1/steps/\$STEP/logs$", log_text),
    (r"^curl .*application/x-ndjson.*/api/v1/steps/\$STEP/logs$", log_ndjson),
    (r"^curl -i .*/api/v1/pipelines/\$ID/retry$", retry),
    (r"^piculet submit hello\.yaml --follow", follow_hello),
    (r"^ID=\$\(piculet submit \.woodpecker\.yaml hello\.yaml .*--secret token=s3cr3t", var_uuid("ID")),
    (r"^piculet events \$ID ", cli_events),
    (r"^piculet list --status success,failure --label project=acme ", cli_list),
    (r"^piculet status \$ID +#", cli_status),
    (r"^piculet status \$ID --exit-status", exit_status),
    (r"^STEP=\$\(piculet status \$ID --json \| python3 ", var_uuid("STEP")),
    (r"^piculet logs \$STEP --follow", cli_logs),
    (r"^ID=\$\(piculet submit hello\.yaml\)", var_uuid("ID")),
    (r"^piculet cancel \$ID --wait", cli_cancel),
    (r"^piculet retry \$ID --follow", cli_retry),
    (r"^piculet list --watch", cli_watch),
    (r"^piculet lint \.woodpecker\.yaml hello\.yaml$", lint_ok),
    (r"^piculet lint --secret token ", lint_ok),
    (r"^PICULET_K8S_POD_SECURITY=restricted piculet render \.woodpecker\.yaml$", render_restricted),
]


# --- running -----------------------------------------------------------------------------------


def wait_finished(s, pipeline_id, seconds=30):
    """The pipeline once it has finished, within `seconds` (the README's grace period is 10 s)."""
    deadline = time.monotonic() + seconds
    while True:
        with urllib.request.urlopen(f"{s['base']}/api/v1/pipelines/{pipeline_id}", timeout=10) as a:
            p = json.load(a)
        if p["finished_at"] is not None or time.monotonic() > deadline:
            return p
        time.sleep(0.2)


def run_one(s, cmd, name):
    """Runs one command in the walkthrough's shell state (working directory and variables,
    carried from command to command in a state file), bounded by what is left of
    TOTAL_TIMEOUT."""
    work, state = s["work"], os.path.join(s["work"], "state.sh")
    out, err = os.path.join(work, f"{name}.out"), os.path.join(work, f"{name}.err")
    text = cmd.replace(README_BASE, s["base"])
    if text.startswith("piculet list --watch"):
        text = f"timeout -s INT {WATCH_SECONDS} {text}"
    script = f"""
[ -f {shlex.quote(state)} ] && . {shlex.quote(state)}
{{ {text}
}} >{shlex.quote(out)} 2>{shlex.quote(err)}
rc=$?
{{ printf 'cd %q\\n' "$PWD"; for v in ID STEP P; do printf '%s=%q\\n' "$v" "${{!v-}}"; done; }} >{shlex.quote(state)}
printf '%s\\n%s\\n' "${{ID-}}" "${{STEP-}}"
exit $rc
"""
    left = s["deadline"] - time.monotonic()
    ensure(left > 0, "the walkthrough took longer than TOTAL_TIMEOUT")
    try:
        done = subprocess.run(["bash", "-c", script], env=s["env"], capture_output=True,
                              text=True, timeout=left)
    except subprocess.TimeoutExpired:
        raise Failed(f"still running after the walkthrough's {TOTAL_TIMEOUT} s")
    ids = done.stdout.split("\n")
    with open(out, encoding="utf-8", errors="replace", newline="") as f:
        o = f.read()
    with open(err, encoding="utf-8", errors="replace", newline="") as f:
        e = f.read()
    return {"cmd": cmd, "out": o, "err": e, "rc": done.returncode,
            "vars": {"ID": ids[0] if ids else "", "STEP": ids[1] if len(ids) > 1 else ""}}


def main():
    readme_path, base, work = sys.argv[1:4]
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    cmds = [c for block in sh_blocks(readme) for c in commands(block)]
    env = dict(os.environ, PICULET_SERVER=base, NO_COLOR="1", TMPDIR=work)
    env.pop("PICULET_TOKEN", None)
    s = {"base": base, "work": work, "env": env,
         "deadline": time.monotonic() + TOTAL_TIMEOUT}
    failures = 0
    for i, expected in enumerate(EXPECTED):
        pattern, check = expected
        if i >= len(cmds):
            print(f"walkthrough: the README lacks command {i + 1}, expected like /{pattern}/")
            return 1
        cmd = cmds[i]["text"]
        first = " ".join(line.strip() for line in cmd.split("\\\n"))
        if not re.search(pattern, first, re.S):
            print(f"walkthrough: README command {i + 1} is not what this script checks "
                  f"(expected /{pattern}/):\n{cmd}")
            return 1
        started = time.monotonic()
        r = run_one(s, cmd, f"{i + 1:02}")
        try:
            check(r, s)
            print(f"ok   {i + 1:2} {time.monotonic() - started:5.1f}s  {first.splitlines()[0][:90]}")
        except Failed as e:
            failures += 1
            print(f"FAIL {i + 1:2}  {cmd.splitlines()[0]}\n     {e}\n"
                  f"     stdout: {r['out'][-600:]!r}\n     stderr: {r['err'][-600:]!r}")
        except (KeyError, IndexError, TypeError, ValueError) as e:
            failures += 1
            print(f"FAIL {i + 1:2}  {cmd.splitlines()[0]}\n     unexpected answer ({e!r})\n"
                  f"     stdout: {r['out'][-600:]!r}\n     stderr: {r['err'][-600:]!r}")
    if len(cmds) > len(EXPECTED):
        print(f"walkthrough: README command {len(EXPECTED) + 1} is not checked by this script:\n"
              f"{cmds[len(EXPECTED)]['text']}")
        return 1
    print(f"walkthrough: {len(cmds)} commands, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        print(f"walkthrough: {e}")
        sys.exit(1)
