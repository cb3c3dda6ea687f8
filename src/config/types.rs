//! The value types a config is made of: secrets that do not print,
//! human durations and byte sizes, and reading a secret from where the
//! config points.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::*;

/// A secret value (password, token). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The only way to read the secret: grep-able on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// The HMAC key of a webhook signing secret: a `whsec_` secret is
    /// base64 (as Standard Webhooks issues them), any other is its bytes.
    pub fn signing_key(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        let key = match self.0.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("a whsec_ secret must be base64 ({e})"))?,
            None => self.0.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(key)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A duration written in human form (`"30s"`, `"5m"`, `"250ms"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write it like \"30s\", \"5m\" or \"250ms\""
                ))
            })
    }
}

/// A size in bytes, written as an integer or with a unit (`"1MiB"`, `"512KiB"`, `"2MB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write it like \"1MiB\" or \"65536\""))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{s}`; use B, KiB, MiB, GiB, kB, MB or GB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n as usize)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Reads a secret from the environment variable or the file a config names.
pub(super) fn read_secret(
    env_key: &str,
    file_key: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            env_key,
            format!("both {env_key} and {file_key} are set"),
            "keep one of them",
        )),
        (Some(var), None) => std::env::var(var).map(|v| Some(Secret(v))).map_err(|_| {
            ConfigError::invalid(
                env_key,
                format!("environment variable `{var}` is not set"),
                format!(
                    "export {var}=... before starting gapless, or name the secret's file with {file_key} instead"
                ),
            )
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(Secret(v.trim_end_matches(['\n', '\r']).to_string())))
            .map_err(|e| {
                ConfigError::invalid(
                    file_key,
                    format!("cannot read {}: {e}", path.display()),
                    "point it at a readable file holding only the secret",
                )
            }),
        (None, None) => Ok(None),
    }
}
