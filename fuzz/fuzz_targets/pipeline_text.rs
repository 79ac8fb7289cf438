//! Arbitrary bytes as a pipeline file (YAML or JSON text): linting and planning must answer
//! with a report, never panic, overflow the stack or run away.
#![no_main]

use libfuzzer_sys::fuzz_target;
use piculet::pipeline::{self, Context, Source, SourceContent};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = [Source {
        name: "fuzz".into(),
        content: SourceContent::Text(text.to_string()),
    }];
    let ctx = Context::default();
    let report = pipeline::lint(&sources, &ctx);
    let planned = pipeline::plan(&sources, &ctx);
    // lint and plan share their checks: a plan exists exactly when lint finds no error.
    assert_eq!(report.errors.is_empty(), planned.is_ok());
});
