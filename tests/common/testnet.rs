//! Test hosts for the tests that need them (src/testnet).

use dtrain::testnet::{Net, NetError};

/// `n` test hosts with `profile`'s links, or `None` after saying SKIPPED
/// where the machine cannot make them (not root, no TUN).
pub fn hosts(n: usize, profile: &str) -> Option<Net> {
    match Net::create(n, &profile.parse().unwrap()) {
        Ok(net) => Some(net),
        Err(e @ NetError::Unavailable(_)) => {
            eprintln!("SKIPPED: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}
