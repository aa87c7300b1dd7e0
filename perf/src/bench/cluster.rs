//! Finding the cluster: each seed host (and every peer it lists) is asked
//! `node`, `partition-generation`, `replicas` and `peers-clear-std` on a
//! blocking connection (after LOGIN when credentials are given), and the
//! masters of the namespace's 4096 partitions are taken from the `replicas`
//! bitmaps (spec §2, §3). The result is a [`ClusterMap`]. During the run a
//! tend thread asks every node for `partition-generation` once a second
//! ([`generations_changed`], one small info call per node) and builds the
//! map again when a generation moved, a node stopped answering, or a worker
//! saw a partition-ownership error; the workers pick the new map up at their
//! next loop turn.

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::wire;

pub const PARTITIONS: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most nodes the bench will talk to (a guard against a runaway peers list).
const MAX_NODES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The `node` info value.
    pub id: String,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct ClusterMap {
    pub nodes: Vec<Node>,
    /// Index into `nodes` of each partition's master.
    pub master: Vec<u16>,
    /// Each node's `partition-generation` when the map was built.
    pub generations: Vec<String>,
}

impl ClusterMap {
    pub fn node_of(&self, partition: usize) -> usize {
        usize::from(self.master[partition])
    }

    /// Same nodes (at the same addresses) and same owners: nothing for the
    /// workers to change.
    pub fn same_routes(&self, other: &ClusterMap) -> bool {
        self.nodes == other.nodes && self.master == other.master
    }
}

/// Whether any node of `map` reports another `partition-generation` than
/// when the map was built, or does not answer (it may have left).
pub fn generations_changed(map: &ClusterMap, credential: Option<&(String, String)>) -> bool {
    map.nodes.iter().zip(&map.generations).any(|(node, known)| {
        let Ok(mut conn) = open(node.addr, credential) else {
            return true;
        };
        match conn.info(&["partition-generation"]) {
            Ok(reply) => reply
                .iter()
                .find(|(n, _)| n == "partition-generation")
                .is_none_or(|(_, v)| v != known),
            Err(_) => true,
        }
    })
}

/// A blocking connection for setup calls.
pub struct InfoConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl InfoConnection {
    pub fn connect(addr: SocketAddr) -> std::io::Result<InfoConnection> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(InfoConnection {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends the request in `self.buf`; returns the reply's type and body.
    fn call(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        self.stream.write_all(&self.buf)?;
        let mut header = [0u8; 8];
        self.stream.read_exact(&mut header)?;
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if header[0] != 2 {
            return Err(bad(format!("reply with protocol version {}", header[0])));
        }
        let size = u64::from_be_bytes(header) & ((1 << 48) - 1);
        if size > 16 << 20 {
            return Err(bad(format!("an info reply of {size} bytes")));
        }
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body)?;
        Ok((header[1], body))
    }

    /// LOGIN; `Ok(code)` with the result code (0 and 52 are success).
    pub fn login(&mut self, user: &str, credential: &str) -> std::io::Result<u8> {
        wire::login_request(&mut self.buf, user, credential);
        let (_, body) = self.call()?;
        Ok(wire::admin_result(&body).unwrap_or(255))
    }

    pub fn info(&mut self, commands: &[&str]) -> std::io::Result<Vec<(String, String)>> {
        wire::info_request(&mut self.buf, commands);
        let (kind, body) = self.call()?;
        if kind != 1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("info reply of frame type {kind}"),
            ));
        }
        Ok(wire::info_reply(&body))
    }
}

/// Whether partition `p` is set in a `replicas` bitmap.
pub fn owns(bitmap: &[u8], partition: usize) -> bool {
    bitmap
        .get(partition >> 3)
        .is_some_and(|b| b & (0x80 >> (partition & 7)) != 0)
}

/// The master bitmap of `namespace` in a `replicas` value
/// (`ns:regime,n_repl,b64,...;ns2:...`): `Ok(None)` if the namespace is
/// not listed.
pub fn master_bitmap(replicas: &str, namespace: &str) -> Result<Option<Vec<u8>>, String> {
    for entry in replicas.split(';').filter(|e| !e.is_empty()) {
        let Some((ns, rest)) = entry.split_once(':') else {
            return Err(format!("replicas entry {entry:?} has no ':'"));
        };
        if ns != namespace {
            continue;
        }
        let columns: Vec<&str> = rest.split(',').collect();
        // regime, replica count, then one bitmap per replica.
        let master = columns
            .get(2)
            .ok_or_else(|| format!("replicas entry for {ns} has no bitmap"))?;
        let bitmap = wire::base64_decode(master)
            .ok_or_else(|| format!("replicas bitmap of {ns} is not base64"))?;
        if bitmap.len() < PARTITIONS / 8 {
            return Err(format!(
                "replicas bitmap of {ns} has {} bytes, want {}",
                bitmap.len(),
                PARTITIONS / 8
            ));
        }
        return Ok(Some(bitmap));
    }
    Ok(None)
}

/// Peer addresses in a `peers-clear-std` value:
/// `gen,default_port,[[id,tls,[host[:port],...]],...]`.
pub fn peer_addresses(value: &str) -> Vec<(String, u16)> {
    let mut parts = value.splitn(3, ',');
    let (_generation, port, list) = (parts.next(), parts.next(), parts.next());
    let default_port: u16 = port.and_then(|p| p.parse().ok()).unwrap_or(3000);
    let Some(list) = list else {
        return Vec::new();
    };
    // Walk the brackets: depth 3 holds the address lists.
    let mut out = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in list.chars() {
        match c {
            '[' => {
                depth += 1;
                if depth > 3 {
                    current.push(c); // an IPv6 literal
                }
            }
            ']' => {
                if depth > 3 {
                    current.push(c);
                } else if depth == 3 && !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                depth -= 1;
            }
            ',' if depth == 3 => {
                let addr = std::mem::take(&mut current);
                if !addr.is_empty() {
                    out.push(addr);
                }
            }
            c if depth >= 3 => current.push(c),
            _ => {}
        }
    }
    out.into_iter()
        .map(|addr| {
            if let Some(rest) = addr.strip_prefix('[') {
                if let Some((host, after)) = rest.split_once(']') {
                    let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
                    return (host.to_string(), port.unwrap_or(default_port));
                }
            }
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => {
                    (host.to_string(), port.parse().unwrap_or(default_port))
                }
                _ => (addr, default_port),
            }
        })
        .collect()
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to no address"))
}

/// Connects and logs in (when `credential` is given) to `addr`.
pub fn open(
    addr: SocketAddr,
    credential: Option<&(String, String)>,
) -> Result<InfoConnection, String> {
    let mut conn =
        InfoConnection::connect(addr).map_err(|e| format!("cannot reach {addr}: {e}"))?;
    if let Some((user, hash)) = credential {
        let code = conn
            .login(user, hash)
            .map_err(|e| format!("login to {addr}: {e}"))?;
        if code != 0 && code != wire::RESULT_SECURITY_NOT_ENABLED {
            return Err(format!(
                "login to {addr} as {user:?} refused with result code {code}"
            ));
        }
    }
    Ok(conn)
}

/// Builds the partition map of `namespace` from the seeds and their peers.
/// `credential` is `(user, client hash)`. Unreachable seeds are skipped as
/// long as one answers; the map must give every partition a master.
pub fn discover(
    seeds: &[(String, u16)],
    namespace: &str,
    credential: Option<&(String, String)>,
) -> Result<ClusterMap, String> {
    let mut queue: VecDeque<(String, u16)> = seeds.iter().cloned().collect();
    let mut tried: HashSet<SocketAddr> = HashSet::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut generations: Vec<String> = Vec::new();
    let mut master: Vec<Option<u16>> = vec![None; PARTITIONS];
    let mut first_error = None;
    let mut namespaces_seen: Vec<String> = Vec::new();
    while let Some((host, port)) = queue.pop_front() {
        let addr = match resolve(&host, port) {
            Ok(a) => a,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        if !tried.insert(addr) {
            continue;
        }
        let mut conn = match open(addr, credential) {
            Ok(c) => c,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let reply = conn
            .info(&[
                "node",
                "partition-generation",
                "replicas",
                "peers-clear-std",
            ])
            .map_err(|e| format!("info call to {addr}: {e}"))?;
        let value = |name: &str| {
            reply
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let id = value("node").to_string();
        if id.is_empty() || id.starts_with("ERROR") {
            return Err(format!("{addr} answered no node id"));
        }
        if nodes.iter().any(|n| n.id == id) {
            continue; // the same node under another address
        }
        if value("partition-generation") == "-1" {
            return Err(format!(
                "node {id} at {addr} is not ready (partition-generation -1)"
            ));
        }
        if nodes.len() == MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes"));
        }
        let node_index = nodes.len() as u16;
        let replicas = value("replicas");
        for entry in replicas.split(';') {
            if let Some((ns, _)) = entry.split_once(':') {
                if !namespaces_seen.iter().any(|n| n == ns) {
                    namespaces_seen.push(ns.to_string());
                }
            }
        }
        if let Some(bitmap) =
            master_bitmap(replicas, namespace).map_err(|e| format!("node {id} at {addr}: {e}"))?
        {
            for (p, slot) in master.iter_mut().enumerate() {
                if owns(&bitmap, p) {
                    *slot = Some(node_index);
                }
            }
        }
        generations.push(value("partition-generation").to_string());
        nodes.push(Node { id, addr });
        queue.extend(peer_addresses(value("peers-clear-std")));
    }
    if nodes.is_empty() {
        return Err(first_error.unwrap_or_else(|| "no hosts given".into()));
    }
    let missing = master.iter().filter(|m| m.is_none()).count();
    if missing == PARTITIONS {
        return Err(format!(
            "namespace {namespace:?} not found (the cluster has: {})",
            if namespaces_seen.is_empty() {
                "none".to_string()
            } else {
                namespaces_seen.join(", ")
            }
        ));
    }
    if missing > 0 {
        return Err(format!(
            "{missing} partitions of namespace {namespace:?} have no master on the {} node(s) found",
            nodes.len()
        ));
    }
    Ok(ClusterMap {
        nodes,
        master: master.into_iter().map(|m| m.expect("checked")).collect(),
        generations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_bitmaps_give_owners() {
        let all = format!("{}//8=", "/".repeat(680));
        let value = format!("bar:0,1,{all};test:0,1,qqqq{}", "A".repeat(680));
        let bitmap = master_bitmap(&value, "test").unwrap().unwrap();
        assert!(owns(&bitmap, 0) && !owns(&bitmap, 1) && owns(&bitmap, 2));
        assert!(!owns(&bitmap, 100));
        assert!(master_bitmap(&value, "nope").unwrap().is_none());
        assert!(master_bitmap("test:0,1,qqqq", "test").is_err());
    }

    #[test]
    fn maps_with_the_same_nodes_and_owners_route_alike() {
        let node = |id: &str, port: u16| Node {
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let a = ClusterMap {
            nodes: vec![node("A", 3000), node("B", 3001)],
            master: (0..PARTITIONS).map(|p| (p % 2) as u16).collect(),
            generations: vec!["1".into(), "1".into()],
        };
        let mut b = a.clone();
        b.generations = vec!["2".into(), "1".into()];
        assert!(a.same_routes(&b), "a new generation alone changes no route");
        b.master[7] = 0;
        assert!(!a.same_routes(&b));
        let mut c = a.clone();
        c.nodes[1] = node("B", 3002);
        assert!(!a.same_routes(&c), "a node at a new address");
    }

    #[test]
    fn peers_lists_parse() {
        assert!(peer_addresses("3,3000,[]").is_empty());
        assert_eq!(
            peer_addresses("7,3000,[[BB9A,,[10.0.0.2:3100]],[BB92,,[10.0.0.3,[::1]:4000]]]"),
            vec![
                ("10.0.0.2".to_string(), 3100),
                ("10.0.0.3".to_string(), 3000),
                ("::1".to_string(), 4000)
            ]
        );
    }
}
