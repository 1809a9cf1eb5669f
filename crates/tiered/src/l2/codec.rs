//! How a value becomes bytes for L2: encode, maybe compress, maybe encrypt.
//!
//! * [`Codec`] — the serialization. [`Codec::Postcard`] (default) is compact
//!   and fast but Rust-only; [`Codec::Json`] is readable in `redis-cli` and by
//!   services in other languages (the envelope header is documented in
//!   [`super::envelope`]); [`Codec::MessagePack`] is compact and also
//!   cross-language.
//! * [`Compression`] — applied only above a size threshold, where it pays for
//!   its CPU time. LZ4 (default, 1 KiB threshold) costs little CPU; zstd (cargo
//!   feature `zstd`) compresses better for text-heavy values.
//! * [`Encryption`] — AES-256-GCM, for caches that hold sensitive data. Each
//!   value carries the id of the key that sealed it, so keys rotate: add the new
//!   key as current and keep the old one for reading until the old values have
//!   expired. The envelope header and the Redis key are authenticated with the
//!   value, so a value cannot be moved to another key or have its expiry edited
//!   without failing to open.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

/// Value serialization for L2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// `postcard`: compact binary, Rust-only.
    #[default]
    Postcard,
    /// `serde_json`: readable, cross-language.
    Json,
    /// MessagePack (`rmp-serde`, named fields): compact, cross-language.
    MessagePack,
}

impl Codec {
    pub(crate) fn id(self) -> u8 {
        match self {
            Codec::Postcard => 0,
            Codec::Json => 1,
            Codec::MessagePack => 2,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Codec::Postcard,
            1 => Codec::Json,
            2 => Codec::MessagePack,
            _ => return None,
        })
    }

    pub(crate) fn encode<V: serde::Serialize>(self, value: &V) -> Result<Vec<u8>, String> {
        match self {
            Codec::Postcard => postcard::to_allocvec(value).map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Codec::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        }
    }

    pub(crate) fn decode<V: serde::de::DeserializeOwned>(self, bytes: &[u8]) -> Result<V, String> {
        match self {
            Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// Compression of encoded values above a size threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Never compress.
    None,
    /// LZ4 for values of at least `min_bytes` encoded bytes.
    Lz4 {
        /// The threshold.
        min_bytes: usize,
    },
    /// zstd at `level` for values of at least `min_bytes` (cargo feature `zstd`).
    #[cfg(feature = "zstd")]
    Zstd {
        /// The threshold.
        min_bytes: usize,
        /// zstd level (1–22; 3 is zstd's default).
        level: i32,
    },
}

impl Default for Compression {
    /// LZ4 above 1 KiB.
    fn default() -> Self {
        Compression::Lz4 { min_bytes: 1024 }
    }
}

/// The compression an envelope says its payload has.
pub(crate) const COMPRESSION_NONE: u8 = 0;
pub(crate) const COMPRESSION_LZ4: u8 = 1;
pub(crate) const COMPRESSION_ZSTD: u8 = 2;

impl Compression {
    /// Compresses `data` if it is large enough; returns the algorithm id used.
    pub(crate) fn compress(self, data: Vec<u8>) -> (u8, Vec<u8>) {
        match self {
            Compression::Lz4 { min_bytes } if data.len() >= min_bytes => (
                COMPRESSION_LZ4,
                lz4_flex::block::compress_prepend_size(&data),
            ),
            #[cfg(feature = "zstd")]
            Compression::Zstd { min_bytes, level } if data.len() >= min_bytes => {
                match zstd::bulk::compress(&data, level) {
                    Ok(out) => (COMPRESSION_ZSTD, out),
                    Err(_) => (COMPRESSION_NONE, data),
                }
            }
            _ => (COMPRESSION_NONE, data),
        }
    }
}

/// Undoes [`Compression::compress`], refusing to produce more than `limit` bytes
/// (the stored size prefix comes from Redis: it is not trusted).
pub(crate) fn decompress(id: u8, data: Vec<u8>, limit: usize) -> Result<Vec<u8>, String> {
    match id {
        COMPRESSION_NONE => Ok(data),
        COMPRESSION_LZ4 => {
            let (size, body) = data
                .split_first_chunk::<4>()
                .ok_or("lz4 payload shorter than its size prefix")?;
            let size = u32::from_le_bytes(*size) as usize;
            // LZ4 cannot expand data more than ~255×: a larger claim is a lie
            // that would make us zero-fill a big buffer for nothing.
            let plausible = body.len().saturating_mul(255).saturating_add(16);
            if size > limit || size > plausible {
                return Err(format!(
                    "lz4 payload of {} bytes claims {size} bytes (limit {limit})",
                    body.len()
                ));
            }
            lz4_flex::block::decompress(body, size).map_err(|e| e.to_string())
        }
        #[cfg(feature = "zstd")]
        COMPRESSION_ZSTD => {
            // Allocate what the frame header says (we write it), not `limit`.
            let size = zstd::zstd_safe::get_frame_content_size(&data)
                .ok()
                .flatten()
                .ok_or("zstd frame without a content size")?;
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > limit {
                return Err(format!(
                    "zstd payload claims {size} bytes; the limit is {limit}"
                ));
            }
            zstd::bulk::decompress(&data, size).map_err(|e| e.to_string())
        }
        #[cfg(not(feature = "zstd"))]
        COMPRESSION_ZSTD => Err("zstd payload, but this build has no `zstd` feature".into()),
        other => Err(format!("unknown compression {other}")),
    }
}

/// AES-256-GCM keys for L2 values: one current key (seals new values) and any
/// number of older ones (still open values sealed before a rotation).
#[derive(Clone)]
pub struct Encryption {
    current: u8,
    keys: Arc<HashMap<u8, Aes256Gcm>>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Encryption")
            .field("current", &self.current)
            .field("key_ids", &ids)
            .finish()
    }
}

/// Length of the AES-GCM nonce stored with each value.
pub(crate) const NONCE_LEN: usize = 12;

impl Encryption {
    /// Seals new values with the 256-bit `key`, identified as `id` in each value.
    pub fn new(id: u8, key: [u8; 32]) -> Self {
        let mut keys = HashMap::new();
        keys.insert(id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)));
        Encryption {
            current: id,
            keys: Arc::new(keys),
        }
    }

    /// Also opens values sealed with an older `key` (`id` must differ from the
    /// current key's).
    pub fn with_previous_key(mut self, id: u8, key: [u8; 32]) -> Self {
        if id != self.current {
            Arc::make_mut(&mut self.keys)
                .insert(id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)));
        }
        self
    }

    pub(crate) fn current_id(&self) -> u8 {
        self.current
    }

    /// Seals `plain` with a fresh random nonce; `aad` is authenticated, not stored.
    pub(crate) fn seal(
        &self,
        plain: &[u8],
        aad: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), String> {
        let cipher = self.keys.get(&self.current).ok_or("no current key")?;
        // A random 96-bit nonce from the OS generator: unique with overwhelming
        // probability for far more values than one key should seal.
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(&nonce, Payload { msg: plain, aad })
            .map_err(|_| "encryption failed".to_string())?;
        Ok((nonce.into(), sealed))
    }

    /// Opens a value sealed by key `id`.
    pub(crate) fn open(
        &self,
        id: u8,
        nonce: &[u8; NONCE_LEN],
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, String> {
        let cipher = self
            .keys
            .get(&id)
            .ok_or_else(|| format!("sealed with unknown key id {id}"))?;
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| "decryption failed (wrong key or tampered value)".to_string())
    }
}
