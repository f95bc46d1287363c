//! The file registry: joins get uids in order, rejoining keeps the uid,
//! joins from many threads at once all land, damaged files are refused.

use dtrain::allreduce::Identity;
use dtrain::subnet::registry::{FileRegistry, Registry, RegistryError, Role};
use std::net::SocketAddr;

fn addr(p: u16) -> SocketAddr {
    format!("127.0.0.1:{p}").parse().unwrap()
}

fn path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dtrain-registry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("registry.json")
}

#[test]
fn joins_get_uids_in_order_and_rejoining_keeps_them() {
    let reg = FileRegistry::new(&path("order"));
    assert!(reg.nodes().unwrap().is_empty());
    let keys: Vec<_> = (0..3).map(|i| Identity::from_seed([i + 1; 32]).public()).collect();
    assert_eq!(reg.join(&keys[0], "127.0.0.1:9000", addr(9100), Role::Validator).unwrap(), 0);
    assert_eq!(reg.join(&keys[1], "127.0.0.1:9001", addr(9101), Role::Miner).unwrap(), 1);
    assert_eq!(reg.join(&keys[2], "127.0.0.1:9002", addr(9102), Role::Miner).unwrap(), 2);
    // Rejoining from a new address keeps the uid.
    assert_eq!(reg.join(&keys[1], "127.0.0.1:9011", addr(9111), Role::Miner).unwrap(), 1);
    let nodes = reg.nodes().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[1].query_addr, "127.0.0.1:9011");
    assert_eq!(reg.by_key(&keys[2]).unwrap().unwrap().uid, 2);
    assert_eq!(nodes[0].role, Role::Validator);
}

#[test]
fn concurrent_joins_all_land_with_distinct_uids() {
    let p = path("concurrent");
    std::thread::scope(|s| {
        for i in 0..16u8 {
            let p = &p;
            s.spawn(move || {
                FileRegistry::new(p).join(&Identity::from_seed([i + 1; 32]).public(), "h:1", addr(10_000 + i as u16), Role::Miner).unwrap()
            });
        }
    });
    let nodes = FileRegistry::new(&p).nodes().unwrap();
    assert_eq!(nodes.len(), 16);
    let mut ports: Vec<_> = nodes.iter().map(|n| n.allreduce_addr.port()).collect();
    ports.sort();
    assert_eq!(ports, (10_000..10_016).collect::<Vec<_>>());
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    let p = path("damaged");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let key = Identity::from_seed([5; 32]).public().to_hex();
    let node = |uid: u32, key: &str| format!(r#"{{"uid":{uid},"key":"{key}","query_addr":"h:1","allreduce_addr":"127.0.0.1:1","role":"miner"}}"#);
    for (text, why) in [
        ("[{".to_string(), "EOF"),
        (format!("[{}]", node(1, &key)), "uids are 0, 1, 2"),
        (format!("[{},{}]", node(0, &key), node(1, &key)), "registered twice"),
        (format!("[{}]", node(0, "abc")), "key"),
        (format!("[{}]", node(0, &key).replace("miner", "boss")), "unknown variant"),
    ] {
        std::fs::write(&p, &text).unwrap();
        let e = FileRegistry::new(&p).nodes().unwrap_err();
        assert!(matches!(e, RegistryError::Invalid(_)) && e.to_string().contains(why), "{text}: {e}");
    }
}

#[test]
fn a_served_registry_takes_joins_over_the_network() {
    use dtrain::subnet::registry::{RegistryService, RemoteRegistry};
    use dtrain::subnet::server::{QueryServer, ServerConfig};
    use std::sync::Arc;
    let file: Arc<dyn Registry> = Arc::new(FileRegistry::new(&path("served")));
    let server_id = Identity::from_seed([50; 32]);
    let url = format!("dtrain://{}@", server_id.public().to_hex());
    let server =
        QueryServer::start("127.0.0.1:0".parse().unwrap(), server_id, Arc::new(RegistryService { registry: file.clone() }), ServerConfig::default())
            .unwrap();
    let url = format!("{url}{}", server.addr());
    // Strangers may join: the signature proves they hold their key.
    std::thread::scope(|s| {
        for i in 0..6u8 {
            let url = &url;
            s.spawn(move || {
                let id = Identity::from_seed([60 + i; 32]);
                let key = id.public();
                let remote = RemoteRegistry::new(url, id).unwrap();
                remote.join(&key, &format!("127.0.0.1:{}", 9000 + i as u16), addr(9100 + i as u16), Role::Miner).unwrap()
            });
        }
    });
    let remote = RemoteRegistry::new(&url, Identity::from_seed([99; 32])).unwrap();
    let nodes = remote.nodes().unwrap();
    assert_eq!(nodes, file.nodes().unwrap());
    assert_eq!(nodes.len(), 6);
    // One cannot register somebody else's key.
    assert!(remote.join(&Identity::from_seed([60; 32]).public(), "h:1", addr(1), Role::Validator).is_err());
    // Bad URLs are clear errors.
    for bad in ["http://x", "dtrain://nokey", "dtrain://abcd@127.0.0.1:1"] {
        assert!(RemoteRegistry::new(bad, Identity::from_seed([1; 32])).is_err(), "{bad}");
    }
    // The registry serves no other query.
    let e = dtrain::subnet::client::send(
        &Identity::from_seed([60; 32]),
        &Identity::from_seed([50; 32]).public(),
        &server.addr().to_string(),
        &dtrain::subnet::protocol::Query::IsAlive(Default::default()),
        std::time::Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown caller"), "{e}");
}
