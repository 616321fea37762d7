//! The files the running config was built from, as Datasets: the config
//! (`modbridge.toml`, whatever its file is called) and every profile it uses
//! (named as the config writes it), with the SHA-256 of the exact bytes that
//! were loaded. Pure: the loader (and, for deployed files, `remote`) fills in
//! the texts and who brought them.

use sha2::{Digest, Sha256};

use crate::model::{Config, DatasetSource};
use crate::things::{dataset_uuid, gateway_uuid};
use crate::wire::DatasetObject;

/// The format of every Dataset the gateway has.
pub const FORMAT: &str = "TOML";

/// The lowercase hex SHA-256 of `bytes`.
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The Dataset of one source file.
pub fn dataset_of(config: &Config, source: &DatasetSource) -> DatasetObject {
    DatasetObject {
        uuid: dataset_uuid(&config.gateway.id, &source.name).to_string(),
        name: source.name.clone(),
        format: FORMAT,
        size: source.text.len() as u64,
        checksum: checksum(source.text.as_bytes()),
        thing_uuid: gateway_uuid(config).to_string(),
        created: source.created,
        created_by: source.created_by.clone(),
        updated: source.updated,
        updated_by: source.updated_by.clone(),
        tags: Vec::new(),
    }
}

/// Every Dataset of the running config, the config first.
pub fn datasets(config: &Config) -> Vec<DatasetObject> {
    config
        .sources
        .iter()
        .map(|s| dataset_of(config, s))
        .collect()
}

/// The source with this Dataset uuid.
pub fn find<'c>(config: &'c Config, uuid: &str) -> Option<&'c DatasetSource> {
    let wanted = crate::model::Uuid::parse_str(uuid).ok()?;
    config
        .sources
        .iter()
        .find(|s| dataset_uuid(&config.gateway.id, &s.name) == wanted)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksums_are_lowercase_hex_sha256() {
        assert_eq!(
            super::checksum(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
