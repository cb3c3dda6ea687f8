//! `kind`-tagged tables (`[source]`, `[[sink]]`): the keys every kind
//! shares, then one kind's own struct, so a key of another kind is a parse
//! error that names the key and the kinds that take it.
//!
//! The dispatch on `kind` is by hand rather than serde's
//! `#[serde(tag = "kind")]`: serde buffers an internally tagged table and
//! its errors lose the key (`unknown variant `seq`` without `in `key``),
//! while a struct deserialized from its own table keeps it.

use serde::de::{DeserializeOwned, Visitor};

use super::ConfigError;

/// The keys a struct's derived `Deserialize` accepts, read by asking it to
/// deserialize from a deserializer that only records the field list.
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let seen = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(FieldProbe(&seen));
    seen.get()
}

/// Records the fields `deserialize_struct` is called with, then fails.
struct FieldProbe<'a>(&'a std::cell::Cell<&'static [&'static str]>);

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(serde::de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `<at>.<k>`: the full name of key `k` of the table at `at` (`sink[0]`).
pub(super) fn key(at: &str, k: &str) -> String {
    format!("{at}.{k}")
}

/// One tagged table being read: where it sits (`sink[2]`, `source`), what
/// it is (`sink`), and each kind with the keys of its own struct.
pub(super) struct Tagged {
    pub at: String,
    pub what: &'static str,
    pub kinds: Vec<(&'static str, &'static [&'static str])>,
}

impl Tagged {
    /// Splits `table` into the shared keys (as `C`), the kind, and the
    /// kind's own keys; a key that belongs to another kind, or to none, is
    /// refused here with its name.
    pub fn split<C: DeserializeOwned>(
        &self,
        mut table: toml::Table,
    ) -> Result<(C, &'static str, toml::Table), ConfigError> {
        let key = |k: &str| key(&self.at, k);
        let names: Vec<&str> = self.kinds.iter().map(|(k, _)| *k).collect();
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => self.kinds.iter().find(|(n, _)| *n == k),
            _ => None,
        };
        let Some((kind, own)) = kind else {
            return Err(ConfigError::invalid(
                &key("kind"),
                format!("is missing or not one of {}", names.join(", ")),
                format!("e.g. kind = \"{}\"", names[0]),
            ));
        };
        let shared = keys_of::<C>();
        let mut common = toml::Table::new();
        let mut rest = toml::Table::new();
        for (k, v) in table {
            if shared.contains(&k.as_str()) {
                common.insert(k, v);
            } else if own.contains(&k.as_str()) {
                rest.insert(k, v);
            } else {
                let owners: Vec<&str> = self
                    .kinds
                    .iter()
                    .filter(|(_, keys)| keys.contains(&k.as_str()))
                    .map(|(n, _)| *n)
                    .collect();
                return Err(match owners.first() {
                    Some(first) => ConfigError::invalid(
                        &key(&k),
                        format!("only a {} {} takes it", owners.join(" or "), self.what),
                        format!("remove it, or set kind = \"{first}\""),
                    ),
                    None => ConfigError::invalid(
                        &key(&k),
                        format!("is not a key of a {} {}", kind, self.what),
                        format!(
                            "the keys of a {kind} {}: {}",
                            self.what,
                            shared
                                .iter()
                                .chain(own.iter())
                                .copied()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                });
            }
        }
        Ok((self.de(common)?, kind, rest))
    }

    /// Deserializes one struct from its table; toml's error ends with the
    /// key it is about (`in `batch``), which becomes the error's key.
    pub fn de<T: DeserializeOwned>(&self, table: toml::Table) -> Result<T, ConfigError> {
        toml::Value::Table(table).try_into().map_err(|e| {
            let text = e.to_string();
            let text = text.trim_end();
            let (message, key) = match text.rsplit_once("\nin `") {
                Some((m, k)) => (m, key(&self.at, k.trim_end_matches('`'))),
                None => (text, self.at.clone()),
            };
            ConfigError::invalid(
                &key,
                message,
                format!(
                    "see the {} keys in README's configuration reference",
                    self.what
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: u32,
        #[serde(rename = "b-b")]
        b: Option<String>,
    }

    #[test]
    fn keys_are_read_from_the_derive() {
        assert_eq!(keys_of::<Two>(), ["a", "b-b"]);
    }

    #[test]
    fn a_value_error_names_its_key() {
        let tagged = Tagged {
            at: "sink[2]".into(),
            what: "sink",
            kinds: vec![],
        };
        let table: toml::Table = toml::from_str("a = \"many\"").unwrap();
        let e = tagged.de::<Two>(table).map(drop).unwrap_err().to_string();
        assert!(e.starts_with("invalid `sink[2].a`: invalid type"), "{e}");
    }
}
