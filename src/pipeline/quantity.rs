//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`), checked with the grammar of
//! `k8s.io/apimachinery/pkg/api/resource` so a bad value is refused at submission, not by the
//! API server when the pod is created.

/// Whether `text` is a valid Kubernetes quantity.
pub fn is_valid(text: &str) -> bool {
    let s = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return false;
    }
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        exp => {
            let Some(rest) = exp.strip_prefix(['e', 'E']) else {
                return false;
            };
            let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
        }
    }
}

/// The message for an invalid quantity.
pub fn message(text: &str) -> String {
    format!(
        "invalid quantity \"{text}\": expected a Kubernetes quantity such as \"500m\", \"2\" or \"1Gi\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_quantities() {
        for q in [
            "1", "500m", "0.5", "1.5Gi", "128Mi", "1e3", "2E-2", "+1k", ".5", "10G",
        ] {
            assert!(is_valid(q), "{q}");
        }
    }

    #[test]
    fn invalid_quantities() {
        for q in ["1x", "", "Gi", "1.2.3", "1 Gi", "1gi", "1e", "m"] {
            assert!(!is_valid(q), "{q}");
        }
        assert_eq!(
            message("1x"),
            "invalid quantity \"1x\": expected a Kubernetes quantity such as \"500m\", \"2\" or \"1Gi\""
        );
    }
}
