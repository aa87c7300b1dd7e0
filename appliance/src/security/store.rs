//! The user and role table, and the file that keeps it across restarts.
//!
//! ```text
//! offset  0  magic "OSPRSEC\0"
//!         8  format version, u32 BE (1)
//!        12  payload length, u32 BE
//!        16  CRC-32C of bytes 0..16 and the payload, u32 BE
//!        20  payload:
//!              u64 next password generation
//!              u32 users;  per user: str name, str server hash,
//!                          u64 password generation, u16 n, n × str role
//!              u32 roles;  per role: str name, u16 n, n × (u8 code, str
//!                          namespace, str set), u16 n, n × str allowlist
//!                          entry, u32 read quota, u32 write quota
//!            (str = u16 BE length + UTF-8 bytes)
//! ```
//!
//! Written whole on every change, atomically: a temp file beside it is
//! written and fsynced, renamed over the old one, and the directory is
//! fsynced. A reader sees the old table or the new one. A file that fails
//! any check (magic, version, length, checksum, structure) is an error that
//! names the file: the daemon refuses to start rather than run with an
//! empty user table.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::privilege::{Code, Privilege};

const MAGIC: &[u8; 8] = b"OSPRSEC\0";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 20;
/// A store larger than this is refused (a table of that size is a bug).
pub const MAX_STORE_BYTES: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// bcrypt of the client hash with a random salt (see `password`).
    pub password_hash: String,
    /// Changes with every password change; session tokens carry it.
    pub generation: u64,
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Role {
    pub name: String,
    pub privileges: Vec<Privilege>,
    pub allowlist: Vec<String>,
    pub read_quota: u32,
    pub write_quota: u32,
}

/// Users and custom roles (the predefined roles are not stored).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Table {
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// Next password generation handed out. Never reused, so a user
    /// dropped and created again does not revive old tokens.
    pub next_generation: u64,
}

impl Table {
    pub fn take_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("stored strings are checked to be short");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The whole file for `table`.
pub fn encode(table: &Table) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&table.next_generation.to_be_bytes());
    payload.extend_from_slice(&(table.users.len() as u32).to_be_bytes());
    for user in table.users.values() {
        put_str(&mut payload, &user.name);
        put_str(&mut payload, &user.password_hash);
        payload.extend_from_slice(&user.generation.to_be_bytes());
        payload.extend_from_slice(&(user.roles.len() as u16).to_be_bytes());
        for role in &user.roles {
            put_str(&mut payload, role);
        }
    }
    payload.extend_from_slice(&(table.roles.len() as u32).to_be_bytes());
    for role in table.roles.values() {
        put_str(&mut payload, &role.name);
        payload.extend_from_slice(&(role.privileges.len() as u16).to_be_bytes());
        for p in &role.privileges {
            payload.push(p.code as u8);
            put_str(&mut payload, &p.namespace);
            put_str(&mut payload, &p.set);
        }
        payload.extend_from_slice(&(role.allowlist.len() as u16).to_be_bytes());
        for entry in &role.allowlist {
            put_str(&mut payload, entry);
        }
        payload.extend_from_slice(&role.read_quota.to_be_bytes());
        payload.extend_from_slice(&role.write_quota.to_be_bytes());
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), &payload);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.data.get(self.at..end))
            .ok_or_else(|| format!("{what} at payload offset {} runs past the end", self.at))?;
        self.at += n;
        Ok(slice)
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn str(&mut self, what: &str) -> Result<String, String> {
        let len = usize::from(self.u16(what)?);
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// Checks and decodes a whole file.
pub fn decode(data: &[u8]) -> Result<Table, String> {
    if data.len() < HEADER_BYTES || &data[..8] != MAGIC {
        return Err("not an Osprey security store (bad magic)".into());
    }
    let word = |at: usize| u32::from_be_bytes(data[at..at + 4].try_into().expect("4"));
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}; this ospreyd reads version {FORMAT_VERSION}"
        ));
    }
    let length = word(12) as usize;
    if data.len() != HEADER_BYTES + length {
        return Err(format!(
            "payload length {length} does not match the file size {} (truncated?)",
            data.len()
        ));
    }
    let payload = &data[HEADER_BYTES..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&data[..16]), payload);
    if crc != word(16) {
        return Err(format!(
            "checksum mismatch (stored {:08x}, computed {crc:08x}): the file is damaged",
            word(16)
        ));
    }
    let mut c = Cursor {
        data: payload,
        at: 0,
    };
    let mut table = Table {
        next_generation: c.u64("next generation")?,
        ..Table::default()
    };
    for _ in 0..c.u32("user count")? {
        let name = c.str("user name")?;
        let password_hash = c.str("password hash")?;
        let generation = c.u64("password generation")?;
        let mut roles = Vec::new();
        for _ in 0..c.u16("role count")? {
            roles.push(c.str("role name")?);
        }
        let user = User {
            name: name.clone(),
            password_hash,
            generation,
            roles,
        };
        if table.users.insert(name.clone(), user).is_some() {
            return Err(format!("user {name:?} appears twice"));
        }
    }
    for _ in 0..c.u32("role count")? {
        let mut role = Role {
            name: c.str("role name")?,
            ..Role::default()
        };
        for _ in 0..c.u16("privilege count")? {
            let code = c.take(1, "privilege code")?[0];
            let code = Code::from_u8(code).ok_or_else(|| format!("unknown privilege {code}"))?;
            role.privileges.push(Privilege {
                code,
                namespace: c.str("privilege namespace")?,
                set: c.str("privilege set")?,
            });
        }
        for _ in 0..c.u16("allowlist count")? {
            role.allowlist.push(c.str("allowlist entry")?);
        }
        role.read_quota = c.u32("read quota")?;
        role.write_quota = c.u32("write quota")?;
        let name = role.name.clone();
        if table.roles.insert(name.clone(), role).is_some() {
            return Err(format!("role {name:?} appears twice"));
        }
    }
    if c.at != payload.len() {
        return Err(format!(
            "{} bytes after the last role",
            payload.len() - c.at
        ));
    }
    Ok(table)
}

/// Reads the store: `Ok(None)` when the file does not exist, an error
/// naming the file when it cannot be read or fails a check.
pub fn load(path: &Path) -> Result<Option<Table>, String> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("security store {}: {e}", path.display())),
    };
    if data.len() > MAX_STORE_BYTES {
        return Err(format!(
            "security store {}: {} bytes, over the {} MiB limit",
            path.display(),
            data.len(),
            MAX_STORE_BYTES >> 20
        ));
    }
    decode(&data).map(Some).map_err(|e| {
        format!(
            "security store {}: {e}; restore it from a backup, or move it away to start with a new \
             admin user (every user and role in it is then lost)",
            path.display()
        )
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes the store atomically (temp file, fsync, rename, fsync the
/// directory).
pub fn save(path: &Path, table: &Table) -> Result<(), String> {
    let bytes = encode(table);
    let fail =
        |what: &str, e: std::io::Error| format!("security store {}: {what}: {e}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| fail("create directory", e))?;
    let temp = temp_path(path);
    {
        let mut file = fs::File::create(&temp).map_err(|e| fail("create temp file", e))?;
        file.write_all(&bytes).map_err(|e| fail("write", e))?;
        file.sync_all().map_err(|e| fail("fsync", e))?;
    }
    fs::rename(&temp, path).map_err(|e| fail("rename", e))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("fsync directory", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::default();
        let generation = t.take_generation();
        t.users.insert(
            "admin".into(),
            User {
                name: "admin".into(),
                password_hash: "$2b$10$abcdefghijklmnopqrstuv0123456789012345678901234567890"
                    .into(),
                generation,
                roles: vec!["user-admin".into(), "sys-admin".into()],
            },
        );
        t.roles.insert(
            "app".into(),
            Role {
                name: "app".into(),
                privileges: vec![
                    Privilege::global(Code::Read),
                    Privilege {
                        code: Code::ReadWrite,
                        namespace: "test".into(),
                        set: "demo".into(),
                    },
                ],
                allowlist: vec!["10.0.0.0/8".into()],
                read_quota: 5,
                write_quota: 6,
            },
        );
        t
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(decode(&encode(&t)).unwrap(), t);
        assert_eq!(
            decode(&encode(&Table::default())).unwrap(),
            Table::default()
        );
    }

    #[test]
    fn every_damaged_byte_is_detected() {
        let bytes = encode(&sample());
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x04;
            assert!(decode(&bad).is_err(), "flip at byte {at} went unnoticed");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn save_and_load_atomically_and_name_the_file_on_damage() {
        let dir = std::env::temp_dir().join(format!(
            "osprey-store-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let path = dir.join("security.dat");
        assert_eq!(load(&path).unwrap(), None, "missing file: no table");
        let t = sample();
        save(&path, &t).unwrap();
        assert!(!temp_path(&path).exists());
        assert_eq!(load(&path).unwrap(), Some(t.clone()));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("checksum"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
