//! The JSON Schema of every document, rendered as committed under `contract/schemas/`. A test fails
//! when a committed schema differs from the types (regenerate with `make generate`).

use schemars::{generate::SchemaSettings, JsonSchema, Schema};

use crate::{
    config_sync::{ConfigRollout, ConfigSyncSettings, ConfigSyncStatus},
    shard_map::ShardMap,
    sidecars::SidecarsConfig,
    splitter::SplitterConfig,
};

/// One document of the contract.
#[derive(Debug, Clone, Copy)]
pub struct Document {
    /// File stem of its schema (`splitter-config` → `splitter-config.json`).
    pub name: &'static str,
    /// Renders its schema.
    pub schema: fn() -> Schema,
}

impl Document {
    /// The file its schema is committed under.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.name)
    }

    /// The schema as committed: pretty JSON with a final newline.
    pub fn render(&self) -> Result<String, serde_json::Error> {
        let mut text = serde_json::to_string_pretty(&(self.schema)())?;
        text.push('\n');
        Ok(text)
    }
}

/// Every document, in a stable order.
pub fn documents() -> [Document; 6] {
    [
        Document {
            name: "splitter-config",
            schema: schema_of::<SplitterConfig>,
        },
        Document {
            name: "shard-map",
            schema: schema_of::<ShardMap>,
        },
        Document {
            name: "sidecars-config",
            schema: schema_of::<SidecarsConfig>,
        },
        Document {
            name: "config-sync-settings",
            schema: schema_of::<ConfigSyncSettings>,
        },
        Document {
            name: "config-sync-status",
            schema: schema_of::<ConfigSyncStatus>,
        },
        Document {
            name: "config-rollout",
            schema: schema_of::<ConfigRollout>,
        },
    ]
}

fn schema_of<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>()
}
