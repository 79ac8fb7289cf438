//! Arbitrary bytes as a JSON submission body: deserialising and linting it must answer with a
//! report, never panic, and lint must agree with planning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use piculet::submission::Submission;

fuzz_target!(|data: &[u8]| {
    let Ok(submission) = serde_json::from_slice::<Submission>(data) else {
        return;
    };

    let limits = piculet::pipeline::Limits::default();
    let report = submission.lint("linux/amd64", &limits);
    let planned = submission.plan("linux/amd64", &limits);
    assert_eq!(report.errors.is_empty(), planned.is_ok());
});
