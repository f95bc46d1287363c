//! Bittensor hotkeys: sr25519 keys (schnorrkel, Substrate's "substrate"
//! signing context) named by SS58 addresses, read from a Bittensor wallet's
//! hotkey file or generated.
//!
//! A wallet keeps each hotkey as an unencrypted JSON file,
//! `~/.bittensor/wallets/<wallet>/hotkeys/<hotkey>`, holding `secretSeed`
//! (the 32-byte mini secret), `privateKey` (the 64-byte expanded key),
//! `publicKey` and `ss58Address`. Either secret works; the derived public
//! key must match the file's, else the file is refused.

use blake2::{Blake2b512, Digest};
use schnorrkel::{ExpansionMode, Keypair, MiniSecretKey, PublicKey, SecretKey, Signature, signing_context};
use std::path::Path;

/// The SS58 address prefix of Bittensor (Substrate's generic 42: addresses start with 5).
pub const SS58_PREFIX: u8 = 42;
const CONTEXT: &[u8] = b"substrate";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HotkeyError {
    #[error("invalid SS58 address {0:?}: {1}")]
    Address(String, &'static str),
    #[error("hotkey file {0}: {1}")]
    File(String, String),
    #[error("malformed signature")]
    Signature,
}

/// An SS58 address of a 32-byte public key.
pub fn ss58_encode(public: &[u8; 32]) -> String {
    let mut data = vec![SS58_PREFIX];
    data.extend_from_slice(public);
    let sum = Blake2b512::new().chain_update(b"SS58PRE").chain_update(&data).finalize();
    data.extend_from_slice(&sum[..2]);
    bs58::encode(data).into_string()
}

/// The public key an SS58 address names (prefix 42, checksum checked).
pub fn ss58_decode(address: &str) -> Result<[u8; 32], HotkeyError> {
    let bad = |why| HotkeyError::Address(address.chars().take(64).collect(), why);
    if address.len() > 64 {
        return Err(bad("too long"));
    }
    let data = bs58::decode(address).into_vec().map_err(|_| bad("not base58"))?;
    if data.len() != 35 {
        return Err(bad("not a 32-byte account with a one-byte prefix"));
    }
    if data[0] != SS58_PREFIX {
        return Err(bad("not a Bittensor (prefix 42) address"));
    }
    let sum = Blake2b512::new().chain_update(b"SS58PRE").chain_update(&data[..33]).finalize();
    if sum[..2] != data[33..] {
        return Err(bad("bad checksum"));
    }
    Ok(data[1..33].try_into().expect("32 bytes"))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An sr25519 keypair.
#[derive(Clone)]
pub struct Hotkey {
    pair: Keypair,
    seed: Option<[u8; 32]>,
}

impl std::fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hotkey({})", self.ss58())
    }
}

impl Hotkey {
    /// From a 32-byte mini secret ("secretSeed"), expanded as Substrate does.
    pub fn from_seed(seed: [u8; 32]) -> Hotkey {
        let mini = MiniSecretKey::from_bytes(&seed).expect("32 bytes make a mini secret");
        Hotkey { pair: mini.expand_to_keypair(ExpansionMode::Ed25519), seed: Some(seed) }
    }

    pub fn generate() -> Hotkey {
        Hotkey::from_seed(crate::allreduce::identity::random_bytes())
    }

    pub fn public(&self) -> [u8; 32] {
        self.pair.public.to_bytes()
    }

    pub fn ss58(&self) -> String {
        ss58_encode(&self.public())
    }

    /// The 64-byte sr25519 signature of `message` (hex with `0x` in headers).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.pair.sign(signing_context(CONTEXT).bytes(message)).to_bytes()
    }

    /// Reads a wallet's hotkey file.
    pub fn load(path: &Path) -> Result<Hotkey, HotkeyError> {
        let err = |why: String| HotkeyError::File(path.display().to_string(), why);
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > 64 << 10 {
            return Err(err("larger than a hotkey file".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| err("not JSON (an encrypted hotkey? dtrain reads unencrypted hotkey files)".into()))?;
        let field = |k: &str| json.get(k).and_then(|v| v.as_str()).and_then(unhex);
        let key = if let Some(seed) = field("secretSeed").filter(|s| s.len() == 32) {
            Hotkey::from_seed(seed.try_into().expect("32 bytes"))
        } else if let Some(private) = field("privateKey").filter(|s| s.len() == 64) {
            let secret = SecretKey::from_ed25519_bytes(&private).map_err(|_| err("invalid privateKey".into()))?;
            Hotkey { pair: secret.to_keypair(), seed: None }
        } else {
            return Err(err("no secretSeed or privateKey".into()));
        };
        if let Some(public) = field("publicKey")
            && public != key.public()
        {
            return Err(err("its publicKey does not belong to its secret".into()));
        }
        if let Some(address) = json.get("ss58Address").and_then(|v| v.as_str())
            && address != key.ss58()
        {
            return Err(err("its ss58Address does not belong to its secret".into()));
        }
        Ok(key)
    }

    /// Writes the key as a wallet hotkey file (mode 0600, a new file).
    pub fn save(&self, path: &Path) -> Result<(), HotkeyError> {
        let err = |why: String| HotkeyError::File(path.display().to_string(), why);
        let public = format!("0x{}", hex(&self.public()));
        let json = serde_json::json!({
            "accountId": public,
            "publicKey": public,
            "privateKey": format!("0x{}", hex(&self.pair.secret.to_ed25519_bytes())),
            "secretPhrase": null,
            "secretSeed": self.seed.map(|s| format!("0x{}", hex(&s))),
            "ss58Address": self.ss58(),
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| err(e.to_string()))?;
        f.write_all(json.to_string().as_bytes()).map_err(|e| err(e.to_string()))
    }
}

/// Checks an sr25519 signature (`0x` hex or raw hex) by the key `ss58` names.
pub fn verify(ss58: &str, message: &[u8], signature_hex: &str) -> Result<bool, HotkeyError> {
    let public = PublicKey::from_bytes(&ss58_decode(ss58)?).map_err(|_| HotkeyError::Address(ss58.into(), "not a valid sr25519 point"))?;
    let bytes = unhex(signature_hex).filter(|b| b.len() == 64).ok_or(HotkeyError::Signature)?;
    let sig = Signature::from_bytes(&bytes).map_err(|_| HotkeyError::Signature)?;
    Ok(public.verify(signing_context(CONTEXT).bytes(message), &sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Substrate's well-known development account //Alice.
    #[test]
    fn ss58_of_a_known_account() {
        let alice = unhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d").unwrap();
        let alice: [u8; 32] = alice.try_into().unwrap();
        assert_eq!(ss58_encode(&alice), "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
        assert_eq!(ss58_decode("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY").unwrap(), alice);
        assert!(ss58_decode("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ").is_err(), "checksum");
        assert!(ss58_decode("not base58 0OIl").is_err());
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let k = Hotkey::from_seed([7; 32]);
        let sig = k.sign(b"1.a.b.c.d");
        let hexed = format!("0x{}", hex(&sig));
        assert_eq!(verify(&k.ss58(), b"1.a.b.c.d", &hexed), Ok(true));
        assert_eq!(verify(&k.ss58(), b"1.a.b.c.e", &hexed), Ok(false));
        assert_eq!(verify(&Hotkey::from_seed([8; 32]).ss58(), b"1.a.b.c.d", &hexed), Ok(false));
        assert!(verify(&k.ss58(), b"x", "0x1234").is_err());
    }

    #[test]
    fn hotkey_files_round_trip_and_mismatches_are_refused() {
        let dir = std::env::temp_dir().join(format!("dtrain-hotkey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let k = Hotkey::generate();
        k.save(&dir.join("hk")).unwrap();
        assert_eq!(Hotkey::load(&dir.join("hk")).unwrap().ss58(), k.ss58());
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("hk")).unwrap()).unwrap();
        json["secretSeed"] = serde_json::Value::Null;
        std::fs::write(dir.join("private-only"), json.to_string()).unwrap();
        assert_eq!(Hotkey::load(&dir.join("private-only")).unwrap().ss58(), k.ss58(), "from privateKey alone");
        json["ss58Address"] = Hotkey::generate().ss58().into();
        std::fs::write(dir.join("mismatch"), json.to_string()).unwrap();
        assert!(Hotkey::load(&dir.join("mismatch")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
