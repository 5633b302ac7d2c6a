//! The `apiVersion` every document carries.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// `apiVersion` of the documents this crate describes.
pub const API_VERSION: &str = "outrigger.dev/v1alpha1";

/// The version of a document's format. Writers always write it; readers accept a document without
/// one (files and ConfigMaps written before documents were versioned lack it) as the first version,
/// and refuse any version they do not know rather than guess at its fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, JsonSchema)]
pub enum ApiVersion {
    /// `outrigger.dev/v1alpha1`.
    #[default]
    #[serde(rename = "outrigger.dev/v1alpha1")]
    V1alpha1,
}

impl ApiVersion {
    /// Every version a reader of this build understands.
    pub const KNOWN: [ApiVersion; 1] = [ApiVersion::V1alpha1];

    /// The version as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1alpha1 => API_VERSION,
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ApiVersion::KNOWN
            .into_iter()
            .find(|version| version.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = ApiVersion::KNOWN.iter().map(|v| v.as_str()).collect();
                serde::de::Error::custom(format!(
                    "unknown apiVersion {text:?}: this reader understands {}; a newer writer may need a newer reader",
                    known.join(", ")
                ))
            })
    }
}
