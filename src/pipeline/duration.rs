//! Step timeouts: parsing durations such as `10m` or `1h30m`, and their serde form in a plan
//! (a humantime string, so a stored plan stays readable).

use std::time::Duration;

/// Parses a duration as humantime does (`90s`, `10m`, `1h 30m`); a bare integer is seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    match humantime::parse_duration(t) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!(
            "invalid duration \"{text}\": must be more than zero"
        )),
        Err(_) => Err(format!(
            "invalid duration \"{text}\": expected a duration such as \"10m\" or \"1h30m\""
        )),
    }
}

/// `Option<Duration>` as a humantime string (`"10m"`).
pub mod opt_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_humantime_and_seconds() {
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("45"), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn rejects_prose_with_exact_message() {
        assert_eq!(
            parse("10 minutes please"),
            Err("invalid duration \"10 minutes please\": expected a duration such as \"10m\" or \"1h30m\"".to_string())
        );
        assert_eq!(
            parse("0s"),
            Err("invalid duration \"0s\": must be more than zero".to_string())
        );
    }
}
