//! One queued write-behind operation and its byte format.
//!
//! The same bytes go into a write-ahead-log frame and into a Redis Stream
//! entry. The format is hand-written rather than derived through serde
//! because it is read back after crashes and across versions: every length is
//! checked, anything malformed decodes to `None` (a corrupt record, counted and
//! skipped), never to a panic or to a wrong record.
//!
//! ```text
//! format u8 (=1) | at_ms u64 | version u64 | codec u8 | flags u8 (1: has value)
//! | key_len u32 | key | value_len u32 | value | tag_count u16 | (len u16 | tag)*
//! ```
//! All integers little-endian.

use crate::l2::Codec;

const FORMAT: u8 = 1;
const HAS_VALUE: u8 = 1;

/// A write-behind operation: `key` becomes `value` (or is deleted) at `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Wall-clock milliseconds when it was acknowledged (for the oldest-age statistic).
    pub at_ms: u64,
    pub version: u64,
    /// How `value` was encoded (kept per record, so a restart with another
    /// codec still reads old records).
    pub codec: Codec,
    pub key: String,
    /// The encoded value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// Tags to invalidate when the write lands in the store.
    pub invalidate: Vec<String>,
}

impl Record {
    /// What holding this record costs in memory, roughly: its bytes plus a
    /// fixed allowance for the struct and the allocations behind it.
    pub fn weight(&self) -> u64 {
        let tags: usize = self.invalidate.iter().map(|t| t.len() + 24).sum();
        (96 + self.key.len() + self.value.as_ref().map_or(0, Vec::len) + tags) as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let value_len = self.value.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(32 + self.key.len() + value_len);
        self.encode_into(&mut out);
        out
    }

    /// [`encode`](Self::encode), appending to `out` (the log's writer
    /// thread frames many records into one buffer without a copy each).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.codec.id());
        out.push(if self.value.is_some() { HAS_VALUE } else { 0 });
        put_bytes32(out, self.key.as_bytes());
        put_bytes32(out, self.value.as_deref().unwrap_or_default());
        // Tag counts and lengths are bounded by `Options` validation
        // (MAX_TAGS, MAX_TAG_LEN), far below u16::MAX.
        let tags: Vec<&String> = self
            .invalidate
            .iter()
            .filter(|t| t.len() <= usize::from(u16::MAX))
            .take(usize::from(u16::MAX))
            .collect();
        out.extend_from_slice(&(tags.len() as u16).to_le_bytes());
        for tag in tags {
            out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
            out.extend_from_slice(tag.as_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let mut r = Reader(bytes);
        if r.u8()? != FORMAT {
            return None;
        }
        let at_ms = r.u64()?;
        let version = r.u64()?;
        let codec = Codec::from_id(r.u8()?)?;
        let flags = r.u8()?;
        let key = String::from_utf8(r.bytes32()?.to_vec()).ok()?;
        let value = r.bytes32()?;
        let value = (flags & HAS_VALUE != 0).then(|| value.to_vec());
        let count = r.u16()?;
        let mut invalidate = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let len = r.u16()?;
            invalidate.push(String::from_utf8(r.take(usize::from(len))?.to_vec()).ok()?);
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(Record {
            at_ms,
            version,
            codec,
            key,
            value,
            invalidate,
        })
    }
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys are at most MAX_KEY_LEN and values at most the queue's value limit,
    // both far below u32::MAX; the writer refuses anything larger first.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            at_ms: 7,
            version: 42,
            codec: Codec::MessagePack,
            key: "user:1".into(),
            value: Some(vec![1, 2, 3]),
            invalidate: vec!["users".into(), "".into()],
        }
    }

    #[test]
    fn round_trips() {
        for record in [
            sample(),
            Record {
                value: None,
                invalidate: vec![],
                ..sample()
            },
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert_eq!(Record::decode(&bytes[..len]), None, "truncated at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Record::decode(&longer), None);
        let mut bad_format = bytes;
        bad_format[0] = 9;
        assert_eq!(Record::decode(&bad_format), None);
    }
}
