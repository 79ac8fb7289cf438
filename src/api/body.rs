//! Reading a submission from a request body: JSON (a submission) or YAML (one pipeline file),
//! within the size limit, with every refusal in the API's error format.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

use super::error::{ApiError, validation};
use crate::pipeline::Diagnostic;
use crate::submission::{SUBMISSION, Submission};

/// The raw body, with axum's rejections (size limit, broken stream) turned into problems.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or_default();
        let timeout = req
            .extensions()
            .get::<BodyTimeout>()
            .map_or(std::time::Duration::MAX, |t| t.0);
        // A deadline for the whole body: a client sending a byte now and then would otherwise
        // hold its connection and this task for as long as it likes.
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::BodyTimeout(timeout))?;
        match read {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge(limit))
            }
            Err(rejection) => Err(ApiError::MalformedBody(rejection.body_text())),
        }
    }
}

/// The configured body limit, carried to [`RawBody`] for its message.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The configured time a whole body may take, carried to [`RawBody`].
#[derive(Clone, Copy)]
pub struct BodyTimeout(pub std::time::Duration);

/// A submission read from the body, with the hash that identifies the request for
/// `Idempotency-Key`.
pub struct ParsedSubmission {
    pub submission: Submission,
    pub request_hash: String,
}

enum Format {
    Json,
    Yaml,
}

fn format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let unsupported = |got: &str| {
        ApiError::UnsupportedMediaType(format!(
            "Content-Type {got} is not accepted; send application/json (a submission) or \
             application/yaml (one pipeline file)"
        ))
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("(none)"));
    };
    let text = value.to_str().map_err(|_| unsupported("(not text)"))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(Format::Yaml),
        e if e.ends_with("+json") => Ok(Format::Json),
        _ => Err(unsupported(text)),
    }
}

/// Whether the body is announced as one YAML pipeline file.
pub fn is_yaml(headers: &HeaderMap) -> bool {
    matches!(format(headers), Ok(Format::Yaml))
}

/// Parses the body by its Content-Type. Malformed JSON is a 400; JSON of the wrong shape
/// (an unknown field, a wrong type) is a 422 with its pointer, line and column.
pub fn parse_submission(headers: &HeaderMap, body: &[u8]) -> Result<ParsedSubmission, ApiError> {
    let format = format(headers)?;
    let submission = match format {
        Format::Json => read_json(body)?,
        Format::Yaml => Submission::from_file(yaml_text(body)?.to_string()),
    };
    let mut hasher = Sha256::new();
    hasher.update(match format {
        Format::Json => b"json:".as_slice(),
        Format::Yaml => b"yaml:".as_slice(),
    });
    hasher.update(body);
    Ok(ParsedSubmission {
        submission,
        request_hash: hex(&hasher.finalize()),
    })
}

/// The text of a YAML body. Bytes that are not UTF-8 are a fault of the file's content, like
/// a YAML syntax error (422 with the place), not of the request's framing.
fn yaml_text(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|e| {
        let valid = &body[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        validation(
            vec![Diagnostic {
                config: "pipeline".into(),
                pointer: String::new(),
                line: u32::try_from(line).ok(),
                column: u32::try_from(column).ok(),
                message: "the pipeline file is not UTF-8 text; save it as UTF-8".into(),
            }],
            vec![],
        )
    })
}

/// A JSON submission. No answer repeats a value of the body: serde quotes the value it could
/// not take (`invalid type: integer `123456`, expected a string`), and that value may be a
/// secret; the answer names its place and its JSON type instead.
fn read_json(body: &[u8]) -> Result<Submission, ApiError> {
    let malformed = |e: serde_json::Error| {
        // Syntax errors name a position and what was expected there, never the text.
        ApiError::MalformedBody(format!(
            "the body is not valid JSON: {e}; check the syntax, or send a pipeline file with \
             Content-Type: application/yaml"
        ))
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedBody(
            "the body is empty; send a JSON submission, or one pipeline file with \
             Content-Type: application/yaml"
                .into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let submission = match serde_path_to_error::deserialize::<_, Submission>(&mut de) {
        Ok(s) => s,
        Err(e) => {
            let (pointer, fields) = json_pointer(e.path());
            let e = e.into_inner();
            if e.classify() != serde_json::error::Category::Data {
                return Err(malformed(e));
            }
            let message = without_value(&strip_position(&e.to_string()), &pointer);
            // An unknown key in a secret may itself be the secret (a value written where the
            // key belongs); the answer points at the secret and names only what it takes.
            let message = match fields {
                Some(fields) if message.starts_with("unknown field ") => {
                    format!("unknown field; {fields}")
                }
                _ => message,
            };
            return Err(validation(
                vec![Diagnostic {
                    config: SUBMISSION.into(),
                    pointer,
                    line: Some(e.line() as u32),
                    column: Some(e.column() as u32),
                    message,
                }],
                vec![],
            ));
        }
    };
    de.end().map_err(malformed)?;
    Ok(submission)
}

/// The sections of a submission that hold secret values, the fields an item of each takes,
/// and how to say so.
const SECRET_SECTIONS: [(&str, &[&str], &str); 2] = [
    (
        "secrets",
        &["name", "value"],
        "a secret takes only `name` and `value`",
    ),
    (
        "registries",
        &["address", "username", "password"],
        "a registry takes only `address`, `username` and `password`",
    ),
];

/// The RFC 6901 pointer of a serde path; an untracked step ends it at the last known place.
/// Inside a section that holds secret values, a key is kept only when it is one of the item's
/// own fields (any other may be a secret written as a key): the pointer ends at the item, and
/// what its items take is returned for the message.
fn json_pointer(path: &serde_path_to_error::Path) -> (String, Option<&'static str>) {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    let mut section: Option<(&[&str], &'static str)> = None;
    for (depth, segment) in path.iter().enumerate() {
        let token = match segment {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } => key.clone(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => break,
        };
        if depth == 0 {
            section = SECRET_SECTIONS
                .iter()
                .find(|(name, _, _)| *name == token)
                .map(|(_, fields, what)| (*fields, *what));
        } else if let Some((fields, what)) = section
            && (depth > 2 || (depth == 2 && !fields.contains(&token.as_str())))
        {
            return (pointer, Some(what));
        }
        pointer.push('/');
        pointer.push_str(&token.replace('~', "~0").replace('/', "~1"));
    }
    (pointer, None)
}

/// What the field at a pointer of a submission takes, in the words of its documentation;
/// `None` where serde's own words (in JSON's terms) say it well enough.
fn expected_form(pointer: &str) -> Option<&'static str> {
    let segments: Vec<&str> = pointer.split('/').skip(1).collect();
    Some(match segments.as_slice() {
        ["name"] => r#"a name for people, such as "acme/api #42""#,
        ["configs"] => "an array of pipeline files, each {\"name\": …, \"content\": …}",
        ["configs", _] => "a pipeline file: an object {\"name\": …, \"content\": …}",
        ["configs", _, "name"] => r#"a workflow name such as "build""#,
        ["configs", _, "content"] => "the pipeline file as text (YAML or JSON)",
        ["pipeline"] => "a pipeline object, as a pipeline file parses into",
        ["variables"] => r#"an object of strings, such as {"CI_COMMIT_BRANCH": "main"}"#,
        ["variables", _] | ["labels", _] => r#"a string (quote numbers and booleans: "1", "true")"#,
        ["secrets"] => "an array of secrets, each {\"name\": …, \"value\": …}",
        ["secrets", _] => "a secret: an object {\"name\": …, \"value\": …}",
        ["secrets", _, "name"] => r#"a secret name such as "registry_password""#,
        ["registries"] => "an array of registries, each {\"address\", \"username\", \"password\"}",
        ["registries", _] => "a registry: an object {\"address\", \"username\", \"password\"}",
        ["registries", _, "address"] => r#"a registry address such as "registry.example.com""#,
        ["repo"] => "a repository: an object {\"clone_url\", \"ref\", \"sha\"}",
        ["repo", "clone_url"] => r#"a URL such as "https://git.example.com/acme/api.git""#,
        ["repo", "ref"] => r#"a git ref such as "refs/heads/main""#,
        ["repo", "sha"] => "a commit id (40 hexadecimal digits)",
        ["labels"] => r#"an object of strings, such as {"project": "acme/api"}"#,
        ["namespace"] => r#"a Kubernetes namespace name such as "ci-acme""#,
        ["timeout"] => r#"a duration such as "1h""#,
        ["platform"] => r#"a platform such as "linux/arm64""#,
        _ => return None,
    })
}

/// serde's message about a value that does not fit, with the value left out: what the field
/// at `pointer` takes and the JSON type found. Messages about keys (an unknown, missing or
/// repeated field) and lengths carry no value and are kept; anything else is replaced whole.
fn without_value(message: &str, pointer: &str) -> String {
    // The expected part comes from the schema; the value comes before it.
    let expected = expected_form(pointer).map(str::to_string).or_else(|| {
        message
            .rfind(", expected ")
            .map(|i| json_terms(&message[i + ", expected ".len()..]))
    });
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(unexpected) = message.strip_prefix(prefix) {
            let found = json_type(unexpected);
            return match expected {
                Some(expected) => format!("expected {expected}, found {found}"),
                None => format!("found {found}, which does not fit here"),
            };
        }
    }
    if message.starts_with("unknown variant ") {
        return match expected {
            Some(expected) => format!("unknown variant: expected {expected}"),
            None => "unknown variant".into(),
        };
    }
    if [
        "unknown field ",
        "missing field ",
        "duplicate field ",
        "invalid length ",
    ]
    .iter()
    .any(|p| message.starts_with(p))
    {
        return message.to_string();
    }
    "this value does not fit the submission's schema (see GET /api/v1/openapi.json)".into()
}

/// The JSON type of the value serde describes as e.g. "integer `5`" or "string \"x\"".
fn json_type(unexpected: &str) -> &'static str {
    let kinds = [
        ("integer", "a number"),
        ("floating point", "a number"),
        ("boolean", "a boolean"),
        ("string", "a string"),
        ("character", "a string"),
        ("map", "an object"),
        ("sequence", "an array"),
        ("unit value", "null"),
        ("null", "null"),
    ];
    kinds
        .iter()
        .find(|(serde, _)| unexpected.starts_with(serde))
        .map_or("another type", |(_, json)| json)
}

/// serde's names for what a field takes, in JSON's terms.
fn json_terms(expected: &str) -> String {
    if expected.starts_with("struct ") || expected == "a map" {
        "an object".into()
    } else if expected == "a sequence" {
        "an array".into()
    } else {
        expected.to_string()
    }
}

/// serde_json appends " at line L column C"; the diagnostic carries those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn content_types() {
        assert!(matches!(
            format(&headers("application/json; charset=utf-8")),
            Ok(Format::Json)
        ));
        assert!(matches!(
            format(&headers("application/x-yaml")),
            Ok(Format::Yaml)
        ));
        assert!(matches!(
            format(&headers("text/plain")),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            format(&HeaderMap::new()),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn wrong_shape_is_a_validation_error_with_position() {
        let err = parse_submission(
            &headers("application/json"),
            br#"{"configs": [], "bogus": 1}"#,
        )
        .err()
        .unwrap();
        let ApiError::Validation { errors, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(errors[0].line, Some(1));
        assert_eq!(errors[0].pointer, "/bogus");
        assert!(
            errors[0].message.starts_with("unknown field `bogus`"),
            "{}",
            errors[0].message
        );
    }

    /// The whole answer, as a client would read it.
    fn answer(body: &serde_json::Value) -> (ApiError, String) {
        let err = parse_submission(&headers("application/json"), body.to_string().as_bytes())
            .err()
            .expect("refused");
        let text = serde_json::to_string(&err.problem()).unwrap();
        (err, text)
    }

    #[test]
    fn secret_values_of_any_type_are_never_echoed() {
        let config = json!([{"name": "ci", "content": "steps: []"}]);
        let cases = [
            (json!(123456), Some("123456"), "a number"),
            (json!(-98765.4321), Some("98765"), "a number"),
            (json!(true), Some("true"), "a boolean"),
            (json!({"k": "obj-s3cret"}), Some("obj-s3cret"), "an object"),
            (json!(["arr-s3cret"]), Some("arr-s3cret"), "an array"),
            // null is a type, not a value: the answer may say "null".
            (json!(null), None, "null"),
        ];
        for (value, shown, found) in cases {
            for (body, pointer) in [
                (
                    json!({"configs": config, "secrets": [{"name": "x", "value": value}]}),
                    "/secrets/0/value",
                ),
                (
                    json!({"configs": config, "registries": [
                        {"address": "r.example.com", "username": "u", "password": value}
                    ]}),
                    "/registries/0/password",
                ),
            ] {
                let (err, text) = answer(&body);
                if let Some(shown) = shown {
                    assert!(!text.contains(shown), "{shown} echoed: {text}");
                }
                let ApiError::Validation { errors, .. } = err else {
                    panic!("{text}")
                };
                assert_eq!(errors[0].pointer, pointer, "{text}");
                assert_eq!(
                    errors[0].message,
                    format!("expected a string, found {found}")
                );
            }
        }
        // A string where an object belongs, with a quote and a backslash in it.
        let secret = r#"qu"ote\s3cret"#;
        let (err, text) = answer(&json!({"configs": config, "secrets": [secret]}));
        for form in [secret, r#"qu\"ote"#, "s3cret"] {
            assert!(!text.contains(form), "{form} echoed: {text}");
        }
        let ApiError::Validation { errors, .. } = err else {
            panic!("{text}")
        };
        assert_eq!(errors[0].pointer, "/secrets/0");
        assert_eq!(
            errors[0].message,
            "expected a secret: an object {\"name\": …, \"value\": …}, found a string"
        );
        // A well-typed secret next to an error elsewhere is not repeated either.
        let (_, text) = answer(&json!({
            "configs": config,
            "secrets": [{"name": "x", "value": secret}],
            "timeout": 5
        }));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("/timeout"), "{text}");
    }

    /// A key that is no field of a secret or registry may be the secret itself: the pointer
    /// ends at the item and the message lists the fields instead of quoting the key. Known
    /// fields and other sections keep their full pointer.
    #[test]
    fn unknown_keys_of_secrets_are_never_echoed() {
        let config = json!([{"name": "ci", "content": "steps: []"}]);
        let key = "987654321012345";
        for (body, pointer, message) in [
            (
                json!({"configs": config, "secrets": [{"name": "s", "value": "x", key: 1}]}),
                "/secrets/0",
                "unknown field; a secret takes only `name` and `value`",
            ),
            (
                json!({"configs": config, "secrets": [{"name": "s", "value": "x"}, {key: "x/y~z"}]}),
                "/secrets/1",
                "unknown field; a secret takes only `name` and `value`",
            ),
            (
                json!({"configs": config, "registries": [{"address": "a", key: [1]}]}),
                "/registries/0",
                "unknown field; a registry takes only `address`, `username` and `password`",
            ),
        ] {
            let (err, text) = answer(&body);
            assert!(!text.contains(key), "{text}");
            let ApiError::Validation { errors, .. } = err else {
                panic!("{text}")
            };
            assert_eq!(errors[0].pointer, pointer, "{text}");
            assert_eq!(errors[0].message, message, "{text}");
            assert_eq!(errors[0].line, Some(1));
        }
        // A known field keeps its place; an unknown key elsewhere is still named.
        let (err, _) = answer(
            &json!({"configs": config, "secrets": [{"name": "s", "value": "v"}], "repo": {"clone_url": "x", "bogus": 1}}),
        );
        let ApiError::Validation { errors, .. } = err else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/repo/bogus");
        let (err, _) = answer(&json!({"configs": config, "secrets": [{"name": "s", "value": 5}]}));
        let ApiError::Validation { errors, .. } = err else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/secrets/0/value");
    }

    #[test]
    fn pointers_name_the_place_and_escape_keys() {
        let (err, _) = answer(&json!({"configs": [], "labels": {"a/b~c": 1}}));
        let ApiError::Validation { errors, .. } = err else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/labels/a~1b~0c");
        assert_eq!(errors[0].line, Some(1));
    }

    #[test]
    fn syntax_errors_are_malformed_and_quote_nothing() {
        for body in [
            &br#"{"secrets": [{"name": "x", "value": "s3cret\q"}]}"#[..],
            br#"{"secrets": [{"name": "x", "value": "s3cret"}]} trailing-s3cret"#,
            br#"{"secrets": [{"name": "x", "value": "s3cret"#,
        ] {
            let err = parse_submission(&headers("application/json"), body)
                .err()
                .unwrap();
            let ApiError::MalformedBody(message) = &err else {
                panic!("{err:?}")
            };
            assert!(!message.contains("s3cret"), "{message}");
        }
    }

    #[test]
    fn serde_messages_lose_their_values() {
        assert_eq!(
            without_value(
                "invalid type: string \"a, expected b\", expected a sequence",
                "/x"
            ),
            "expected an array, found a string"
        );
        assert_eq!(
            without_value(
                "invalid value: integer `7`, expected a positive number",
                "/x"
            ),
            "expected a positive number, found a number"
        );
        assert_eq!(
            without_value("unknown variant `s3cret`, expected `a` or `b`", "/x"),
            "unknown variant: expected `a` or `b`"
        );
        for kept in [
            "unknown field `bogus`, expected `name` or `value`",
            "missing field `name`",
            "duplicate field `name`",
            "invalid length 3, expected 2 elements",
        ] {
            assert_eq!(without_value(kept, "/x"), kept);
        }
        assert!(!without_value("s3cret is bad", "/x").contains("s3cret"));
    }

    /// A wrong type names the field's place and the form it takes, in the words of its
    /// documentation, and the JSON type found; never the value.
    #[test]
    fn wrong_types_say_what_form_the_field_takes() {
        let config = json!([{"name": "ci", "content": "steps: []"}]);
        for (field, value, pointer, message) in [
            (
                "timeout",
                json!(3600),
                "/timeout",
                r#"expected a duration such as "1h", found a number"#,
            ),
            (
                "namespace",
                json!(7),
                "/namespace",
                r#"expected a Kubernetes namespace name such as "ci-acme", found a number"#,
            ),
            (
                "platform",
                json!(["linux"]),
                "/platform",
                r#"expected a platform such as "linux/arm64", found an array"#,
            ),
            (
                "labels",
                json!({"team": 1}),
                "/labels/team",
                r#"expected a string (quote numbers and booleans: "1", "true"), found a number"#,
            ),
            (
                "variables",
                json!({"N": true}),
                "/variables/N",
                r#"expected a string (quote numbers and booleans: "1", "true"), found a boolean"#,
            ),
            (
                "pipeline",
                json!([1, 2]),
                "/pipeline",
                "expected a pipeline object, as a pipeline file parses into, found an array",
            ),
            (
                "pipeline",
                json!("steps: []"),
                "/pipeline",
                "expected a pipeline object, as a pipeline file parses into, found a string",
            ),
            (
                "repo",
                json!({"clone_url": 5}),
                "/repo/clone_url",
                r#"expected a URL such as "https://git.example.com/acme/api.git", found a number"#,
            ),
        ] {
            let mut body = json!({"configs": config});
            body[field] = value;
            if field == "pipeline" {
                body.as_object_mut().unwrap().remove("configs");
            }
            let (err, text) = answer(&body);
            let ApiError::Validation { errors, detail, .. } = err else {
                panic!("{text}")
            };
            assert_eq!(errors[0].pointer, pointer, "{text}");
            assert_eq!(errors[0].message, message, "{text}");
            assert_eq!(
                detail,
                format!("1 error in the submission: {pointer}: {message}")
            );
        }
    }

    #[test]
    fn an_empty_json_body_says_it_is_empty() {
        for body in [&b""[..], b"  \n"] {
            let err = parse_submission(&headers("application/json"), body)
                .err()
                .unwrap();
            let ApiError::MalformedBody(message) = &err else {
                panic!("{err:?}")
            };
            assert!(message.starts_with("the body is empty;"), "{message}");
        }
    }

    #[test]
    fn a_yaml_body_that_is_not_utf8_is_refused_at_its_place() {
        let err = parse_submission(&headers("application/yaml"), b"steps:\n  - na\xffme: a\n")
            .err()
            .unwrap();
        let ApiError::Validation { errors, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!((errors[0].line, errors[0].column), (Some(2), Some(7)));
        assert_eq!(
            errors[0].message,
            "the pipeline file is not UTF-8 text; save it as UTF-8"
        );
    }

    #[test]
    fn same_body_same_hash() {
        let a = parse_submission(&headers("application/yaml"), b"steps: []")
            .ok()
            .unwrap();
        let b = parse_submission(&headers("application/yaml"), b"steps: []")
            .ok()
            .unwrap();
        let c = parse_submission(&headers("application/yaml"), b"steps: [1]")
            .ok()
            .unwrap();
        assert_eq!(a.request_hash, b.request_hash);
        assert_ne!(a.request_hash, c.request_hash);
    }
}
