//! Arbitrary bytes as the first bytes of a connection: the lean HTTP/1 writer may take them
//! only when they are exactly one bodiless `GET` head that accepts an event stream, read the
//! same way by a strict parser; everything else (a body in any framing, a second request, an
//! upgrade, a malformed or oversized head) must be left to hyper. This is the seam where
//! request smuggling would live. The strict reading is httparse's with its defaults: this holds
//! the lean writer to its rules, it does not compare it with how hyper would read the bytes.
#![no_main]

use axum::http::{Method, Version, header};
use libfuzzer_sys::fuzz_target;
use piculet::http::{Head, classify};

fuzz_target!(|data: &[u8]| {
    let Head::Lean(request, version) = classify(data) else {
        return;
    };
    // One whole head, nothing after it, as a strict parser reads it.
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut strict = httparse::Request::new(&mut headers);
    assert_eq!(
        strict.parse(data).ok(),
        Some(httparse::Status::Complete(data.len())),
        "the lean writer took what is not exactly one head"
    );
    assert_eq!(strict.method, Some("GET"));
    assert_eq!(request.method(), Method::GET);
    assert!([Version::HTTP_10, Version::HTTP_11].contains(&version));
    assert_eq!(request.version(), version);
    // No body, in any framing, and nothing that changes the protocol.
    let h = request.headers();
    for name in [header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT] {
        assert!(!h.contains_key(&name), "{name} reached the lean writer");
    }
    assert!(
        h.get_all(header::CONTENT_LENGTH).iter().all(|v| v == "0"),
        "a body reached the lean writer"
    );
    // Every header the client sent, as it sent it.
    assert_eq!(h.len(), strict.headers.len());
    for sent in strict.headers.iter() {
        assert!(
            h.get_all(sent.name).iter().any(|v| v.as_bytes() == sent.value),
            "{} changed on its way",
            sent.name
        );
    }
    assert!(
        h.get_all(header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("text/event-stream")))
    );
});
