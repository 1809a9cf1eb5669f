//! The L2 wire format: a versioned envelope around the encoded value.
//!
//! Format 1, all integers big-endian, times in nanoseconds since the Unix epoch
//! (the cache's [`Clock`](crate::Clock)):
//!
//! ```text
//! offset  size  field
//!  0       1    format version (1); any other value is a miss
//!  1       8    entry version (conditional writes compare these 8 bytes)
//!  9       1    flags: bit 0 absent ("no such thing" cached), bits 1-2 codec
//!               (0 postcard, 1 JSON, 2 MessagePack), bits 3-4 compression
//!               (0 none, 1 LZ4 block with a 4-byte little-endian size prefix,
//!               2 zstd), bit 5 encrypted (set on every entry of a cache
//!               that encrypts, absent ones included); other bits must be 0
//! 10       8    created at
//! 18       8    refresh at (eager refresh point; u64::MAX = none)
//! 26       8    fresh until (logical expiry)
//! 34       8    stale until (end of the grace window; Redis's TTL ends here too)
//! 42       8    TTL the entry was given (adaptive TTL doubles it)
//! 50       8    how long the load took (the XFetch delta)
//! 58       2    tag count n, then n times: 2-byte length + UTF-8 tag
//!  …            if encrypted: 1-byte key id + 12-byte nonce
//!  …            payload to the end: codec bytes, compressed, then encrypted
//!               (AES-256-GCM over the payload, authenticating the Redis key
//!               and every header byte before it); empty for an absent entry
//!               (encrypted: the 16-byte tag alone)
//! ```
//!
//! A reader in another language needs only this table and the codec (JSON or
//! MessagePack) to use the values.

use std::time::Duration;

use super::codec::{self, Codec, Compression, Encryption, NONCE_LEN};
use crate::clock::{duration_nanos, Timestamp};

/// The format version this build writes and reads.
pub const FORMAT: u8 = 1;

const FLAG_ABSENT: u8 = 1;
const FLAG_ENCRYPTED: u8 = 1 << 5;
const KNOWN_FLAGS: u8 = 0b0011_1111;
const FIXED_HEADER: usize = 60;
const MAX_TAGS: usize = 4096;

/// Everything about an entry except its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub version: u64,
    pub created: Timestamp,
    pub refresh_at: Timestamp,
    pub fresh_until: Timestamp,
    pub stale_until: Timestamp,
    pub ttl: Duration,
    pub load_duration: Duration,
    /// Tag ids as the entry carries them (`t:…` user tags, `k:…` dependencies).
    pub tags: Vec<String>,
}

/// How a cache writes values.
#[derive(Debug, Clone)]
pub(crate) struct Format {
    pub codec: Codec,
    pub compression: Compression,
    pub encryption: Option<Encryption>,
    /// The largest payload accepted after decompression.
    pub max_value_bytes: usize,
}

/// A decoded envelope.
pub(crate) struct Decoded<V> {
    pub meta: Meta,
    /// `None`: a cached "absent".
    pub value: Option<V>,
}

/// Encodes an entry for `redis_key`.
pub(crate) fn encode<V: serde::Serialize>(
    meta: &Meta,
    value: Option<&V>,
    format: &Format,
    redis_key: &str,
) -> Result<Vec<u8>, String> {
    let (compression, payload) = match value {
        Some(v) => format.compression.compress(format.codec.encode(v)?),
        None => (codec::COMPRESSION_NONE, Vec::new()),
    };
    let mut flags = (format.codec.id() << 1) | (compression << 3);
    if value.is_none() {
        flags |= FLAG_ABSENT;
    }
    // An absent entry is sealed too (an empty payload, authenticated): a
    // plaintext "absent" planted in a cache that encrypts would otherwise
    // hide a key's value, and could not be told from one this cache wrote.
    let encryption = format.encryption.as_ref();
    if encryption.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let tags_len: usize = meta.tags.iter().map(|t| 2 + t.len()).sum();
    let mut out = Vec::with_capacity(FIXED_HEADER + tags_len + 1 + NONCE_LEN + payload.len() + 16);
    out.push(FORMAT);
    out.extend_from_slice(&meta.version.to_be_bytes());
    out.push(flags);
    for t in [
        meta.created,
        meta.refresh_at,
        meta.fresh_until,
        meta.stale_until,
    ] {
        out.extend_from_slice(&t.as_nanos().to_be_bytes());
    }
    out.extend_from_slice(&duration_nanos(meta.ttl).to_be_bytes());
    out.extend_from_slice(&duration_nanos(meta.load_duration).to_be_bytes());
    let count = u16::try_from(meta.tags.len()).map_err(|_| "too many tags")?;
    out.extend_from_slice(&count.to_be_bytes());
    for tag in &meta.tags {
        let len = u16::try_from(tag.len()).map_err(|_| "tag too long")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(tag.as_bytes());
    }
    match encryption {
        Some(enc) => {
            out.push(enc.current_id());
            // The nonce is part of the authenticated header; reserve it, seal,
            // then write it in place.
            let nonce_at = out.len();
            out.extend_from_slice(&[0; NONCE_LEN]);
            let aad = aad(redis_key, &out[..nonce_at]);
            let (nonce, sealed) = enc.seal(&payload, &aad)?;
            out[nonce_at..].copy_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
        None => out.extend_from_slice(&payload),
    }
    Ok(out)
}

/// The authenticated data: the Redis key, then the header up to the nonce.
fn aad(redis_key: &str, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(redis_key.len() + 1 + header.len());
    aad.extend_from_slice(redis_key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(header);
    aad
}

/// Whether `bytes` is a removal's tombstone: an absent entry with no
/// lifetime at all (fresh until = stale until = created).
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    let field = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.first_chunk::<8>().copied())
    };
    match (bytes.first(), bytes.get(9), field(10), field(26), field(34)) {
        (Some(&FORMAT), Some(flags), Some(created), Some(fresh), Some(stale)) => {
            flags & FLAG_ABSENT != 0 && created == fresh && fresh == stale
        }
        _ => false,
    }
}

/// The version of an envelope, without decoding the rest.
pub(crate) fn version_of(bytes: &[u8]) -> Option<u64> {
    match bytes {
        [FORMAT, rest @ ..] => rest.first_chunk::<8>().map(|v| u64::from_be_bytes(*v)),
        _ => None,
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated envelope ({} bytes)", self.bytes.len()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// Decodes an envelope read from `redis_key`. Any defect is an `Err` with a
/// reason; nothing here panics on bad input.
pub(crate) fn decode<V: serde::de::DeserializeOwned>(
    bytes: &[u8],
    format: &Format,
    redis_key: &str,
) -> Result<Decoded<V>, String> {
    let mut r = Reader { bytes, at: 0 };
    let version_byte = r.u8()?;
    if version_byte != FORMAT {
        return Err(format!("unknown envelope format {version_byte}"));
    }
    let version = r.u64()?;
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let codec = Codec::from_id((flags >> 1) & 0b11).ok_or("unknown codec")?;
    let compression = (flags >> 3) & 0b11;
    let ts = |n: u64| Timestamp::from_nanos(n);
    let created = ts(r.u64()?);
    let refresh_at = ts(r.u64()?);
    let fresh_until = ts(r.u64()?);
    let stale_until = ts(r.u64()?);
    let ttl = Duration::from_nanos(r.u64()?);
    let load_duration = Duration::from_nanos(r.u64()?);
    if !(created <= fresh_until && fresh_until <= stale_until) {
        return Err("inconsistent times".into());
    }
    let count = usize::from(r.u16()?);
    if count > MAX_TAGS {
        return Err(format!("{count} tags"));
    }
    let mut tags = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let tag = std::str::from_utf8(r.take(len)?).map_err(|_| "tag is not UTF-8")?;
        tags.push(tag.to_owned());
    }
    let meta = Meta {
        version,
        created,
        refresh_at,
        fresh_until,
        stale_until,
        ttl,
        load_duration,
        tags,
    };
    let payload = if flags & FLAG_ENCRYPTED != 0 {
        let enc = format
            .encryption
            .as_ref()
            .ok_or("encrypted value, but no encryption key is configured")?;
        let key_id = r.u8()?;
        let header_end = r.at;
        let nonce: [u8; NONCE_LEN] = r
            .take(NONCE_LEN)?
            .try_into()
            .map_err(|_| "bad nonce length")?;
        let aad = aad(redis_key, &bytes[..header_end]);
        enc.open(key_id, &nonce, &bytes[r.at..], &aad)?
    } else {
        if format.encryption.is_some() {
            // A cache that encrypts never wrote this: refuse plaintext that
            // someone with access to Redis may have planted.
            return Err("plaintext value in a cache that requires encryption".into());
        }
        bytes[r.at..].to_vec()
    };
    if flags & FLAG_ABSENT != 0 {
        if !payload.is_empty() || compression != codec::COMPRESSION_NONE {
            return Err("an absent entry with a payload".into());
        }
        return Ok(Decoded { meta, value: None });
    }
    if payload.len() > format.max_value_bytes {
        return Err(format!("payload of {} bytes", payload.len()));
    }
    let plain = codec::decompress(compression, payload, format.max_value_bytes)?;
    let value = codec.decode(&plain)?;
    Ok(Decoded {
        meta,
        value: Some(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            version: 7,
            created: Timestamp::from_nanos(1),
            refresh_at: Timestamp::MAX,
            fresh_until: Timestamp::from_nanos(100),
            stale_until: Timestamp::from_nanos(200),
            ttl: Duration::from_nanos(99),
            load_duration: Duration::ZERO,
            tags: vec!["t:a".into(), "k:b".into()],
        }
    }

    fn format(compression: Compression, encryption: Option<Encryption>) -> Format {
        Format {
            codec: Codec::Postcard,
            compression,
            encryption,
            max_value_bytes: 1 << 20,
        }
    }

    #[test]
    fn round_trips_and_rejects_every_truncation() {
        let f = format(Compression::None, Some(Encryption::new(1, [9; 32])));
        let value = "x".repeat(50);
        let bytes = encode(&meta(), Some(&value), &f, "k").unwrap();
        assert_eq!(version_of(&bytes), Some(7));
        let back: Decoded<String> = decode(&bytes, &f, "k").unwrap();
        assert_eq!(back.meta, meta());
        assert_eq!(back.value.as_deref(), Some(value.as_str()));
        for cut in 0..bytes.len() {
            assert!(
                decode::<String>(&bytes[..cut], &f, "k").is_err(),
                "cut {cut}"
            );
        }
        // Moved to another key: refused.
        assert!(decode::<String>(&bytes, &f, "other").is_err());
        // Any flipped byte: refused (header bytes are authenticated too).
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode::<String>(&bad, &f, "k").is_err(), "flip {i}");
        }
    }

    #[test]
    fn an_absent_entry_is_sealed_in_a_cache_that_encrypts() {
        let f = format(Compression::None, Some(Encryption::new(1, [9; 32])));
        let bytes = encode::<String>(&meta(), None, &f, "k").unwrap();
        let back: Decoded<String> = decode(&bytes, &f, "k").unwrap();
        assert_eq!((back.meta, back.value), (meta(), None));
        // Moved to another key, or its version or times edited: refused.
        assert!(decode::<String>(&bytes, &f, "other").is_err());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode::<String>(&bad, &f, "k").is_err(), "flip {i}");
        }
        // A plaintext "absent", as a cache without the key would write it:
        // refused where encryption is required, read where it is not.
        let plain = format(Compression::None, None);
        let planted = encode::<String>(&meta(), None, &plain, "k").unwrap();
        assert!(decode::<String>(&planted, &f, "k").is_err());
        assert!(decode::<String>(&planted, &plain, "k")
            .unwrap()
            .value
            .is_none());
        // A plaintext absent entry with a payload after it: refused.
        let mut padded = planted.clone();
        padded.push(0);
        assert!(decode::<String>(&padded, &plain, "k").is_err());
    }

    #[test]
    fn a_huge_claimed_size_is_refused_not_allocated() {
        let f = format(Compression::Lz4 { min_bytes: 0 }, None);
        let bytes = encode(&meta(), Some(&"y".repeat(100)), &f, "k").unwrap();
        // The payload starts after the fixed header and the two tags.
        let payload_at = FIXED_HEADER + (2 + 3) + (2 + 3);
        let mut bad = bytes.clone();
        bad[payload_at..payload_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode::<String>(&bad, &f, "k").is_err());
        let ok: Decoded<String> = decode(&bytes, &f, "k").unwrap();
        assert_eq!(ok.value.unwrap().len(), 100);
    }
}
