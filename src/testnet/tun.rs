//! Entering a network namespace from one thread, and opening a TUN device
//! inside one. Linux only, and it needs CAP_NET_ADMIN (root).
//!
//! A TUN device belongs to the namespace its creator's thread was in when
//! it attached (`TUNSETIFF`), and lives exactly as long as its file is
//! open: when this process ends, however it ends, the devices go with it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// The file that names namespace `ns` (made by `ip netns add`).
pub fn netns_path(ns: &str) -> String {
    format!("/var/run/netns/{ns}")
}

/// Moves the calling thread into namespace `ns` (only this thread: its
/// sockets from now on live there).
pub fn enter(ns: &str) -> io::Result<()> {
    let f = File::open(netns_path(ns))?;
    set_ns(&f)
}

fn set_ns(f: &File) -> io::Result<()> {
    // SAFETY: a valid descriptor of a network namespace file.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens TUN device `name` (IP packets, no extra header) inside namespace
/// `ns`; the calling thread returns to its own namespace.
pub fn open_tun_in(ns: &str, name: &str) -> io::Result<File> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("device name {name:?} is too long")));
    }
    let home = File::open("/proc/thread-self/ns/net")?;
    enter(ns)?;
    let tun = open_tun(name);
    set_ns(&home)?;
    tun
}

fn open_tun(name: &str) -> io::Result<File> {
    let tun = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back the name of) an ifreq,
    // which `IfReq` lays out; the descriptor is /dev/net/tun's.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// Waits up to `ms` for `f` to be readable.
pub fn readable(f: &File, ms: i32) -> bool {
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 && p.revents & libc::POLLIN != 0 }
}
