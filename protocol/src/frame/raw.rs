//! [`Json`]: an application JSON value (message bodies and meta) kept as its
//! raw text.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An arbitrary JSON value kept as its raw text (message bodies and meta): the
/// gateway stores and forwards it without re-encoding.
#[derive(Clone)]
pub struct Json(pub Box<RawValue>);

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Json {}

impl Json {
    /// Wrap raw JSON text, checking it is valid JSON.
    pub fn from_text(text: impl Into<String>) -> Result<Json, serde_json::Error> {
        RawValue::from_string(text.into()).map(Json)
    }

    /// Serialise any value.
    /// A value that cannot be serialised (a map with non-string keys) becomes
    /// `null`.
    pub fn from_value<T: Serialize>(value: &T) -> Json {
        Json(serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// The raw JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parse into a typed value.
    pub fn parse<T: de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    // Through a `Value` because frames tagged by `op` are buffered by serde,
    // and a `RawValue` cannot be read back from that buffer.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        serde_json::value::to_raw_value(&value)
            .map(Json)
            .map_err(de::Error::custom)
    }
}
