//! The frame header of the all-reduce's TCP streams: fixed size, fixed
//! layout, little-endian, parsed without serde and without trusting a byte
//! of it. Every frame carries the round it belongs to, what it is, where its
//! payload goes, the payload's length (bounded before anything is read) and
//! a 64-bit XXH3 checksum of the payload.
//!
//! ```text
//! offset size field
//!      0    4 magic "DTAR"
//!      4    1 version (4: Waiting frames both ways)
//!      5    1 kind
//!      6    2 sender (member index)
//!      8    8 round id
//!     16    4 span (owner member index)
//!     20    4 chunk (index within the span)
//!     24    4 payload length in bytes
//!     28    4 reserved, zero
//!     32    8 XXH3-64 of the payload
//! ```

pub const MAGIC: [u8; 4] = *b"DTAR";
pub const VERSION: u8 = 5;
pub const HEADER_LEN: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The signed handshake that opens a connection.
    Hello = 1,
    /// A sender's chunk of the owner's span (scatter-reduce).
    Scatter = 2,
    /// The owner's averaged chunk (all-gather).
    Gather = 3,
    /// The sender gives up on the round (with a reason in the payload).
    Abort = 4,
    /// The handshake's signature (see `handshake`).
    Auth = 5,
    /// The owner's summary after its last averaged chunk: who contributed,
    /// and the hash of the averaged span.
    Done = 6,
    /// An audited round's sender, before its scatter chunks: its signed
    /// statement of its part of the owner's span (see `audit::Statement`).
    Statement = 7,
    /// A member's testimony to the adjudicator after its data phase (see
    /// `ruling`).
    Testimony = 8,
    /// The adjudicator's ruling: who is left out (see `ruling`).
    Ruling = 9,
    /// Before the ruling: the adjudicator to every member, that it still
    /// waits for a third one (whose data or testimony is moving), and a
    /// member to the adjudicator, that its inputs are still coming; so the
    /// wait is not counted as the sender's stall. Empty.
    Waiting = 10,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Scatter,
            3 => Kind::Gather,
            4 => Kind::Abort,
            5 => Kind::Auth,
            6 => Kind::Done,
            7 => Kind::Statement,
            8 => Kind::Testimony,
            9 => Kind::Ruling,
            10 => Kind::Waiting,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub sender: u16,
    pub round: u64,
    pub span: u32,
    pub chunk: u32,
    pub len: u32,
    pub checksum: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a dtrain all-reduce frame (magic {0:02x?})")]
    Magic([u8; 4]),
    #[error("protocol version {0} is not supported (this is {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("reserved bytes are not zero")]
    Reserved,
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLong { len: u32, max: u32 },
    #[error("payload checksum mismatch")]
    Checksum,
}

/// XXH3-64 (seed 0) of a payload. The `xxh3` crate picks its AVX2 loop at
/// run time (the binary is built for baseline x86-64, where other crates
/// get only SSE2): 1.4× the speed on the cache-resident payloads hashed
/// here, several times per byte of a round.
pub fn checksum(payload: &[u8]) -> u64 {
    xxh3::hash64_with_seed(payload, 0)
}

impl Header {
    /// A header for `payload`, its length and checksum filled in.
    pub fn for_payload(kind: Kind, sender: u16, round: u64, span: u32, chunk: u32, payload: &[u8]) -> Header {
        let len = u32::try_from(payload.len()).expect("payloads are chunk-sized");
        Header { kind, sender, round, span, chunk, len, checksum: checksum(payload) }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        b[6..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..16].copy_from_slice(&self.round.to_le_bytes());
        b[16..20].copy_from_slice(&self.span.to_le_bytes());
        b[20..24].copy_from_slice(&self.chunk.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[32..40].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Parses a header, refusing payloads longer than `max_len` before a
    /// single payload byte is read.
    pub fn parse(b: &[u8; HEADER_LEN], max_len: u32) -> Result<Header, WireError> {
        let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        if b[4] != VERSION {
            return Err(WireError::Version(b[4]));
        }
        let kind = Kind::from_u8(b[5]).ok_or(WireError::Kind(b[5]))?;
        if b[28..32] != [0; 4] {
            return Err(WireError::Reserved);
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let len = u32_at(24);
        if len > max_len {
            return Err(WireError::TooLong { len, max: max_len });
        }
        Ok(Header {
            kind,
            sender: u16::from_le_bytes([b[6], b[7]]),
            round: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            span: u32_at(16),
            chunk: u32_at(20),
            len,
            checksum: u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
        })
    }

    /// Checks a received payload against the header.
    pub fn verify(&self, payload: &[u8]) -> Result<(), WireError> {
        if payload.len() != self.len as usize || checksum(payload) != self.checksum { Err(WireError::Checksum) } else { Ok(()) }
    }
}
