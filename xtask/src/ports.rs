//! Loopback ports: free ones, who listens where (read from /proc, so it
//! needs neither `ss` nor root), and tiny readiness probes.

use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// `n` distinct free ports on 127.0.0.1: all bound at once, so they
/// differ, then released. Another process may take one before we bind it
/// again; starters say "already in use" then, and callers may retry.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("could not find free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// True if something accepts connections on 127.0.0.1:`port`.
pub fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// One listening TCP socket from /proc/net/tcp{,6}.
#[derive(Debug, PartialEq)]
pub struct Listener {
    pub port: u16,
    pub loopback: bool,
    inode: u64,
}

/// Parses one line of /proc/net/tcp or tcp6; `None` unless it listens.
fn parse_proc_line(line: &str) -> Option<Listener> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
    if fields.len() < 10 || fields[3] != "0A" {
        return None;
    }
    let (addr, port) = fields[1].split_once(':')?;
    Some(Listener {
        port: u16::from_str_radix(port, 16).ok()?,
        loopback: is_loopback_hex(addr)?,
        inode: fields[9].parse().ok()?,
    })
}

/// The kernel prints each 32-bit word of the address as a native-endian
/// number: its bytes in memory order are the address's.
fn is_loopback_hex(addr: &str) -> Option<bool> {
    let words = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).is_loopback()),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            Some(v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        }
        _ => None,
    }
}

fn all_listeners() -> Vec<Listener> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_proc_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The socket inodes `pid` holds open.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The TCP ports `pid` listens on.
pub fn listeners_of(pid: i32) -> Vec<Listener> {
    let inodes = socket_inodes(pid);
    all_listeners()
        .into_iter()
        .filter(|l| inodes.contains(&l.inode))
        .collect()
}

/// The process (PID, name) listening on `port`, when /proc shows it: one in
/// another container or network namespace does not appear.
pub fn holder(port: u16) -> Option<(i32, String)> {
    let inodes: HashSet<u64> = all_listeners()
        .into_iter()
        .filter(|l| l.port == port)
        .map(|l| l.inode)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let procs = fs::read_dir("/proc").ok()?;
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| !socket_inodes(*pid).is_disjoint(&inodes))
        .map(|pid| (pid, crate::process::comm(pid).unwrap_or_default()))
}

/// "name (pid N)" of whoever listens on `port`, for error messages.
pub fn describe_holder(port: u16) -> String {
    match holder(port) {
        Some((pid, name)) => format!("{name} (pid {pid})"),
        None => "another process (of another user, container or namespace?)".to_string(),
    }
}

/// Fails with one line if `port` is taken: what it is for, who holds it,
/// and `hint`, how to move ours.
pub fn require_free(port: u16, what: &str, hint: &str) -> Result<()> {
    if accepts(port) {
        bail!(
            "port {port} ({what}) is already in use by {}: stop that, or {hint}",
            describe_holder(port)
        );
    }
    Ok(())
}

/// True if `GET path` on 127.0.0.1:`port` answers 2xx within 2 s.
pub fn http_ok(port: u16, path: &str) -> bool {
    let reply = exchange(port, get(port, path).as_bytes());
    let status = reply.split_whitespace().nth(1).unwrap_or("");
    reply.starts_with("HTTP/") && status.starts_with('2')
}

/// The body of a 2xx answer to `GET path` on 127.0.0.1:`port`, read to
/// its end; `None` on any failure.
pub fn http_body(port: u16, path: &str) -> Option<String> {
    let mut stream = sent(port, get(port, path).as_bytes(), Duration::from_secs(5))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    status.starts_with('2').then(|| body.to_string())
}

/// An HTTP/1.0 `GET path` to 127.0.0.1:`port`: the server closes after
/// its answer, so reading to the end reads exactly that answer.
fn get(port: u16, path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")
}

/// True if a Redis on 127.0.0.1:`port` answers PING.
pub fn redis_ping(port: u16) -> bool {
    exchange(port, b"PING\r\n").starts_with("+PONG")
}

/// Sends `request`, returns the start of the reply ("" on any failure).
fn exchange(port: u16, request: &[u8]) -> String {
    let Some(mut stream) = sent(port, request, Duration::from_secs(2)) else {
        return String::new();
    };
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A connection to 127.0.0.1:`port` (within 2 s) with `request` written,
/// its reads waiting at most `read_timeout` each.
fn sent(port: u16, request: &[u8], read_timeout: Duration) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let _ = stream.set_read_timeout(Some(read_timeout));
    stream.write_all(request).ok()?;
    Some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that answers one request with `reply`; its port.
    fn answering(reply: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        port
    }

    #[test]
    fn a_body_is_read_to_its_end_and_only_from_a_2xx() {
        let long =
            Box::leak(format!("HTTP/1.0 200 OK\r\n\r\n{}", "x".repeat(70_000)).into_boxed_str());
        let body = http_body(answering(long), "/metrics").expect("a body");
        assert_eq!(body.len(), 70_000);
        assert_eq!(
            http_body(answering("HTTP/1.0 503 Busy\r\n\r\nno"), "/metrics"),
            None
        );
    }

    #[test]
    fn proc_lines_tell_loopback_from_the_rest() {
        let lo =
            "0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4242 1";
        let any =
            "1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4243 1";
        let conn =
            "2: 0100007F:1F92 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 4244 1";
        let parsed = parse_proc_line(lo).expect("listening");
        if cfg!(target_endian = "little") {
            assert_eq!((parsed.port, parsed.loopback), (8080, true));
            assert!(!parse_proc_line(any).expect("listening").loopback);
        }
        assert!(parse_proc_line(conn).is_none());
        let v6_lo = "00000000000000000000000001000000";
        let v6_any = "00000000000000000000000000000000";
        assert_eq!(is_loopback_hex(v6_lo), Some(cfg!(target_endian = "little")));
        assert_eq!(is_loopback_hex(v6_any), Some(false));
    }

    #[test]
    fn a_listener_of_ours_is_found_with_its_holder() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let pid = std::process::id() as i32;
        assert!(listeners_of(pid)
            .iter()
            .any(|l| l.port == port && l.loopback));
        assert_eq!(holder(port).map(|h| h.0), Some(pid));
        assert!(accepts(port));
    }
}
