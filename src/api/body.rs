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
        match Bytes::from_request(req, state).await {
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

/// Parses the body by its Content-Type. Malformed JSON is a 400; JSON of the wrong shape
/// (an unknown field, a wrong type) is a 422 with its line and column.
pub fn parse_submission(headers: &HeaderMap, body: &[u8]) -> Result<ParsedSubmission, ApiError> {
    let format = format(headers)?;
    let submission = match format {
        Format::Json => serde_json::from_slice::<Submission>(body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => validation(
                    vec![Diagnostic {
                        config: SUBMISSION.into(),
                        pointer: String::new(),
                        line: Some(e.line() as u32),
                        column: Some(e.column() as u32),
                        message: strip_position(&e.to_string()),
                    }],
                    vec![],
                ),
                _ => ApiError::MalformedBody(format!(
                    "the body is not valid JSON: {e}; check the syntax, or send a pipeline file \
                     with Content-Type: application/yaml"
                )),
            }
        })?,
        Format::Yaml => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::MalformedBody("the pipeline file is not UTF-8 text".into())
            })?;
            Submission::from_file(text.to_string())
        }
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
        assert!(
            errors[0].message.starts_with("unknown field `bogus`"),
            "{}",
            errors[0].message
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
