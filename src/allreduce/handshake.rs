//! The handshake that opens every connection of a round, in one round trip:
//!
//! 1. both ends send `Hello` at once: group digest, a fresh random nonce and
//!    the weight of their contribution (header: sender index, round id);
//! 2. on the other's Hello, each end sends `Auth`: its ed25519 signature of
//!    (round, digest, its index, the other's index, both nonces, its
//!    weight).
//!
//! The signature covers the *other* end's fresh nonce, so a recorded
//! handshake is worthless later (replay), and the round id and digest, so it
//! is worthless in another round or group. Until both Auths check out, no
//! data frame is accepted on the connection.

use super::identity::{Identity, PublicKey};

pub const HELLO_LEN: usize = 32 + 32 + 4;
pub const AUTH_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hello {
    pub digest: [u8; 32],
    pub nonce: [u8; 32],
    pub weight: f32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("hello of {0} bytes, expected {HELLO_LEN}")]
    HelloLength(usize),
    #[error("auth of {0} bytes, expected {AUTH_LEN}")]
    AuthLength(usize),
    #[error("bad signature (not signed with the key the group lists for member {0})")]
    Signature(usize),
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..32].copy_from_slice(&self.digest);
        b[32..64].copy_from_slice(&self.nonce);
        b[64..].copy_from_slice(&self.weight.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Result<Hello, HandshakeError> {
        if b.len() != HELLO_LEN {
            return Err(HandshakeError::HelloLength(b.len()));
        }
        Ok(Hello {
            digest: b[..32].try_into().expect("32 bytes"),
            nonce: b[32..64].try_into().expect("32 bytes"),
            weight: f32::from_le_bytes(b[64..].try_into().expect("4 bytes")),
        })
    }
}

/// What member `signer` signs towards member `peer`: `signer_hello` is what
/// it sent, `peer_nonce` the nonce it received.
pub fn auth_message(round: u64, signer: u16, peer: u16, signer_hello: &Hello, peer_nonce: &[u8; 32]) -> [u8; 24 + 8 + 32 + 4 + 64 + 4] {
    let mut m = [0u8; 24 + 8 + 32 + 4 + 64 + 4];
    m[..24].copy_from_slice(b"dtrain-allreduce-auth-v1");
    m[24..32].copy_from_slice(&round.to_le_bytes());
    m[32..64].copy_from_slice(&signer_hello.digest);
    m[64..66].copy_from_slice(&signer.to_le_bytes());
    m[66..68].copy_from_slice(&peer.to_le_bytes());
    m[68..100].copy_from_slice(&signer_hello.nonce);
    m[100..132].copy_from_slice(peer_nonce);
    m[132..].copy_from_slice(&signer_hello.weight.to_le_bytes());
    m
}

/// This end's Auth payload.
pub fn sign_auth(id: &Identity, round: u64, me: u16, peer: u16, my_hello: &Hello, peer_nonce: &[u8; 32]) -> [u8; AUTH_LEN] {
    id.sign(&auth_message(round, me, peer, my_hello, peer_nonce))
}

/// Checks the far end's Auth payload against the key the group lists for it.
pub fn verify_auth(
    key: &PublicKey,
    round: u64,
    peer: u16,
    me: u16,
    peer_hello: &Hello,
    my_nonce: &[u8; 32],
    auth: &[u8],
) -> Result<(), HandshakeError> {
    let sig: &[u8; AUTH_LEN] = auth.try_into().map_err(|_| HandshakeError::AuthLength(auth.len()))?;
    if key.verify(&auth_message(round, peer, me, peer_hello, my_nonce), sig) { Ok(()) } else { Err(HandshakeError::Signature(peer as usize)) }
}
