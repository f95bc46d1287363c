//! Who is in the network: uid, public key, query address, all-reduce
//! address, role. Behind a trait so that a file, a registry served by the
//! master validator, or (later) a chain can answer.

use super::scoring::Uid;
use crate::allreduce::PublicKey;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Miner,
    Validator,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub uid: Uid,
    /// Public key, 64 hex digits.
    pub key: String,
    /// Where its control-plane queries go (`host:port`).
    pub query_addr: String,
    pub allreduce_addr: SocketAddr,
    pub role: Role,
    /// Its Bittensor hotkey (SS58), for queries in the axon convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotkey: Option<String>,
}

impl Node {
    pub fn public_key(&self) -> Result<PublicKey, RegistryError> {
        PublicKey::from_hex(&self.key).map_err(|e| RegistryError::Invalid(format!("uid {}: key: {e}", self.uid)))
    }
}

/// The all-reduce group that `uids` name, in that order: miners own equal
/// spans, validators none (they receive the average only).
pub fn group_of(nodes: &[Node], uids: &[Uid]) -> Result<crate::allreduce::Group, RegistryError> {
    let members = uids
        .iter()
        .map(|&uid| {
            let n = nodes.get(uid as usize).ok_or_else(|| RegistryError::Invalid(format!("uid {uid} is not registered")))?;
            Ok(crate::allreduce::Member {
                id: uid.to_string(),
                addr: n.allreduce_addr,
                key: n.public_key()?,
                fraction: if n.role == Role::Miner { 1.0 } else { 0.0 },
            })
        })
        .collect::<Result<Vec<_>, RegistryError>>()?;
    Ok(crate::allreduce::Group { members })
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("registry: {0}")]
    Invalid(String),
    #[error("registry is full ({0} nodes)")]
    Full(usize),
}

pub trait Registry: Send + Sync {
    /// Every registered node, by uid.
    fn nodes(&self) -> Result<Vec<Node>, RegistryError>;

    /// Registers a node (or updates the addresses and role of the node with
    /// the same key, keeping its uid) and returns its uid.
    fn join(&self, key: &PublicKey, query_addr: &str, allreduce_addr: SocketAddr, role: Role) -> Result<Uid, RegistryError>;

    fn by_key(&self, key: &PublicKey) -> Result<Option<Node>, RegistryError> {
        let hex = key.to_hex();
        Ok(self.nodes()?.into_iter().find(|n| n.key == hex))
    }
}

/// Largest registry file read (thousands of nodes fit easily).
const MAX_FILE: u64 = 16 << 20;
const MAX_NODES: usize = u16::MAX as usize;

/// A JSON file (`[{uid, key, query_addr, allreduce_addr, role}]`). Joins
/// from several processes are serialized with an exclusive `flock` on the
/// file and written by atomic replacement, so a reader never sees half a
/// file.
pub struct FileRegistry {
    path: PathBuf,
}

fn validate(nodes: &[Node]) -> Result<(), RegistryError> {
    let mut keys = std::collections::HashSet::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.uid as usize != i {
            return Err(RegistryError::Invalid(format!("entry {i} has uid {} (uids are 0, 1, 2, … in order)", n.uid)));
        }
        // A dtrain node has an ed25519 key; a node of the Bittensor tooling
        // may be known by its hotkey alone (the key left empty).
        match (&n.key[..], &n.hotkey) {
            ("", Some(h)) => {
                super::bittensor::hotkey::ss58_decode(h).map_err(|e| RegistryError::Invalid(format!("uid {}: hotkey: {e}", n.uid)))?;
            }
            _ => {
                n.public_key()?;
            }
        }
        if !n.key.is_empty() && !keys.insert(n.key.clone()) {
            return Err(RegistryError::Invalid(format!("key {} is registered twice", n.key)));
        }
        if let Some(h) = &n.hotkey
            && !keys.insert(h.clone())
        {
            return Err(RegistryError::Invalid(format!("hotkey {h} is registered twice")));
        }
        if n.query_addr.is_empty() || n.query_addr.len() > 256 {
            return Err(RegistryError::Invalid(format!("uid {}: bad query address", n.uid)));
        }
    }
    Ok(())
}

impl FileRegistry {
    pub fn new(path: &Path) -> FileRegistry {
        FileRegistry { path: path.to_path_buf() }
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
        move |source| RegistryError::Io { path: self.path.clone(), source }
    }

    fn parse(&self, text: &str) -> Result<Vec<Node>, RegistryError> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let nodes: Vec<Node> = serde_json::from_str(text).map_err(|e| RegistryError::Invalid(format!("{}: {e}", self.path.display())))?;
        validate(&nodes)?;
        Ok(nodes)
    }
}

impl Registry for FileRegistry {
    fn nodes(&self) -> Result<Vec<Node>, RegistryError> {
        let mut text = String::new();
        match fs::File::open(&self.path) {
            Ok(f) => f.take(MAX_FILE).read_to_string(&mut text).map_err(self.io())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io()(e)),
        };
        self.parse(&text)
    }

    fn join(&self, key: &PublicKey, query_addr: &str, allreduce_addr: SocketAddr, role: Role) -> Result<Uid, RegistryError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(self.io())?;
        }
        // The lock lives on a sibling file: the registry itself is replaced.
        let lock_path = self.path.with_extension("lock");
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(self.io())?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io()(std::io::Error::last_os_error()));
        }
        let mut nodes = self.nodes()?;
        let hex = key.to_hex();
        let uid = match nodes.iter_mut().find(|n| n.key == hex) {
            Some(n) => {
                (n.query_addr, n.allreduce_addr, n.role) = (query_addr.to_string(), allreduce_addr, role);
                n.uid
            }
            None => {
                if nodes.len() >= MAX_NODES {
                    return Err(RegistryError::Full(nodes.len()));
                }
                let uid = nodes.len() as Uid;
                nodes.push(Node { uid, key: hex, query_addr: query_addr.to_string(), allreduce_addr, role, hotkey: None });
                uid
            }
        };
        validate(&nodes)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(self.io())?;
        f.write_all(serde_json::to_string_pretty(&nodes).expect("plain data serializes").as_bytes()).and_then(|_| f.sync_all()).map_err(self.io())?;
        fs::rename(&tmp, &self.path).map_err(self.io())?;
        Ok(uid)
    }
}

/// Serves a registry over the control plane (`POST /Join`, `POST
/// /Registry`): what the master validator runs so that nodes join over
/// the network instead of sharing a file.
pub struct RegistryService {
    pub registry: std::sync::Arc<dyn Registry>,
}

impl super::server::Handler for RegistryService {
    fn known(&self, _caller: &PublicKey) -> bool {
        false
    }
    fn handle(&self, _caller: &PublicKey, q: super::protocol::Query) -> Result<super::protocol::Query, String> {
        Err(format!("this is a registry: {} is not served here", q.name()))
    }
    fn join(&self, caller: &PublicKey, req: super::protocol::JoinRequest) -> Result<Uid, String> {
        if req.query_addr.is_empty() || req.query_addr.len() > 256 {
            return Err("query_addr must be 1 to 256 characters".into());
        }
        self.registry.join(caller, &req.query_addr, req.allreduce_addr, req.role).map_err(|e| e.to_string())
    }
    fn registry(&self) -> Result<Vec<Node>, String> {
        self.registry.nodes().map_err(|e| e.to_string())
    }
}

/// A registry served by another node (see `RegistryService`), reached as
/// `dtrain://<key hex>@host:port`.
pub struct RemoteRegistry {
    identity: crate::allreduce::Identity,
    server: PublicKey,
    addr: String,
    timeout: std::time::Duration,
    /// The last answer and when it came: a node asks on every query it
    /// serves, the registry changes rarely, and when the server cannot be
    /// reached the last list is better than none.
    cache: std::sync::Mutex<Option<(std::time::Instant, Vec<Node>)>>,
}

/// How long a fetched node list is reused.
const REMOTE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl RemoteRegistry {
    /// Parses `dtrain://<64 hex key>@host:port`; `identity` signs the queries.
    pub fn new(url: &str, identity: crate::allreduce::Identity) -> Result<RemoteRegistry, RegistryError> {
        let rest = url.strip_prefix("dtrain://").ok_or_else(|| RegistryError::Invalid(format!("{url}: expected dtrain://KEY@HOST:PORT")))?;
        let (key, addr) = rest.split_once('@').ok_or_else(|| RegistryError::Invalid(format!("{url}: expected dtrain://KEY@HOST:PORT")))?;
        let server = PublicKey::from_hex(key).map_err(|e| RegistryError::Invalid(format!("{url}: key: {e}")))?;
        Ok(RemoteRegistry { identity, server, addr: addr.to_string(), timeout: std::time::Duration::from_secs(10), cache: Default::default() })
    }
}

impl Registry for RemoteRegistry {
    fn nodes(&self) -> Result<Vec<Node>, RegistryError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, nodes)) = cache.as_ref()
            && at.elapsed() < REMOTE_TTL
        {
            return Ok(nodes.clone());
        }
        let nodes = match super::client::fetch_registry(&self.identity, &self.server, &self.addr, self.timeout) {
            Ok(nodes) => nodes,
            // The registry's server is down: the last list it gave stands.
            Err(e) => match cache.as_ref() {
                Some((_, nodes)) => {
                    tracing::warn!("registry {}: {e}; using the list fetched before", self.addr);
                    return Ok(nodes.clone());
                }
                None => return Err(RegistryError::Invalid(e.to_string())),
            },
        };
        validate(&nodes)?;
        *cache = Some((std::time::Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    fn join(&self, key: &PublicKey, query_addr: &str, allreduce_addr: SocketAddr, role: Role) -> Result<Uid, RegistryError> {
        if *key != self.identity.public() {
            return Err(RegistryError::Invalid("a remote registry registers the key that signs the request".into()));
        }
        let req = super::protocol::JoinRequest { query_addr: query_addr.to_string(), allreduce_addr, role };
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        super::client::join_registry(&self.identity, &self.server, &self.addr, &req, self.timeout).map_err(|e| RegistryError::Invalid(e.to_string()))
    }
}

/// A registry from a command line: `dtrain://KEY@HOST:PORT` for a served
/// one (queries signed by `identity`), anything else a file path.
pub fn open(spec: &str, identity: &crate::allreduce::Identity) -> Result<std::sync::Arc<dyn Registry>, RegistryError> {
    if spec.starts_with("dtrain://") {
        Ok(std::sync::Arc::new(RemoteRegistry::new(spec, identity.clone())?))
    } else {
        Ok(std::sync::Arc::new(FileRegistry::new(Path::new(spec))))
    }
}
