"""Writes a corrected copy of one template of the installed openapi-python-client into DIR, for
`openapi-python-client generate --custom-template-path DIR`.

openapi-python-client 0.29.1 (the pinned version; upstream issue #1451) types a required request
body with several media types as `Body | File | Unset = UNSET` without importing `Unset`: a
Jinja `set` inside a `for` loop does not outlive the loop, so its "all bodies are required" flag
is never seen. The generated `lint_pipeline` and `render_pipeline` modules then fail at import
(NameError) and under mypy. The fix is the one proposed upstream: carry the flag in a Jinja
namespace. The document is not at fault (the bodies are required, in JSON or YAML), so the
generator is corrected, not the document or the generated code.

    python fix_generator_templates.py DIR
"""

import sys
from pathlib import Path

import openapi_python_client

NAME = "endpoint_macros.py.jinja"
FIXES = [
    (
        "{% elif endpoint.bodies | length > 1 %}\nbody:\n",
        (
            "{% elif endpoint.bodies | length > 1 %}\n"
            "{% set bodies = namespace(required=true) %}\nbody:\n"
        ),
    ),
    (
        "{% set body_required = body_required and body.prop.required %}",
        "{% set bodies.required = bodies.required and body.prop.required %}",
    ),
    ("{% if not body_required %}", "{% if not bodies.required %}"),
]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(openapi_python_client.__file__).parent / "templates" / NAME
    text = source.read_text(encoding="utf-8")
    for old, new in FIXES:
        if text.count(old) != 1:
            # Another version of the generator: its template may be fixed already. Check the
            # generated lint_pipeline.py imports `Unset` (or is typed without it), then drop
            # this step.
            print(f"{source}: the text to fix is not there once: {old!r}", file=sys.stderr)
            return 1
        text = text.replace(old, new)
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    (target / NAME).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
