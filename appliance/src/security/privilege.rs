//! Privileges, the predefined roles, and the one question the data path
//! asks: may these privileges do this action on this namespace and set?
//!
//! A privilege is a code (spec §9.3) plus, for the data codes (≥ 10), an
//! optional scope: a namespace, or a namespace and a set. The global codes
//! (0..=4) are never scoped. A predefined role is one global privilege of
//! the same name; a custom role holds any list of privileges.
//!
//! What each code allows (Aerospike's model):
//!
//! | code | allows |
//! |---|---|
//! | user-admin | user and role administration |
//! | sys-admin | truncate, `shutdown`, `get-config`, other node commands |
//! | data-admin | truncate, `get-config` (and index/UDF admin, unsupported) |
//! | udf-admin, sindex-admin | their admin commands (unsupported here) |
//! | read | get, exists, batch reads, scans |
//! | write | put, delete, touch, operate with writes (not reads) |
//! | read-write, read-write-udf | read and write |
//! | truncate | `truncate`, `truncate-namespace` |
//!
//! Any authenticated user may run the info commands that only describe the
//! cluster, change their own password and query themselves.

use std::fmt;

/// Privilege codes (spec §9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    UserAdmin = 0,
    SysAdmin = 1,
    DataAdmin = 2,
    UdfAdmin = 3,
    SindexAdmin = 4,
    Read = 10,
    ReadWrite = 11,
    ReadWriteUdf = 12,
    Write = 13,
    Truncate = 14,
}

/// Every code with its role name, in code order.
pub const CODES: [(Code, &str); 10] = [
    (Code::UserAdmin, "user-admin"),
    (Code::SysAdmin, "sys-admin"),
    (Code::DataAdmin, "data-admin"),
    (Code::UdfAdmin, "udf-admin"),
    (Code::SindexAdmin, "sindex-admin"),
    (Code::Read, "read"),
    (Code::ReadWrite, "read-write"),
    (Code::ReadWriteUdf, "read-write-udf"),
    (Code::Write, "write"),
    (Code::Truncate, "truncate"),
];

impl Code {
    pub fn from_u8(code: u8) -> Option<Code> {
        CODES
            .iter()
            .find(|(c, _)| *c as u8 == code)
            .map(|(c, _)| *c)
    }

    /// The predefined role (and privilege) name.
    pub fn name(self) -> &'static str {
        CODES
            .iter()
            .find(|(c, _)| *c == self)
            .map(|(_, n)| *n)
            .expect("every code is listed")
    }

    /// Data privileges can be limited to a namespace or a namespace + set.
    pub fn scopable(self) -> bool {
        self as u8 >= 10
    }
}

/// The predefined role with this name, as its single global privilege.
pub fn predefined_role(name: &str) -> Option<Code> {
    CODES.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
}

/// One privilege: a code and its scope (empty = every namespace / set).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Privilege {
    pub code: Code,
    pub namespace: String,
    pub set: String,
}

impl Privilege {
    pub fn global(code: Code) -> Privilege {
        Privilege {
            code,
            namespace: String::new(),
            set: String::new(),
        }
    }

    fn covers(&self, namespace: &str, set: &str) -> bool {
        (self.namespace.is_empty() || self.namespace == namespace)
            && (self.set.is_empty() || self.set == set)
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code.name())?;
        if !self.namespace.is_empty() {
            write!(f, "[{}", self.namespace)?;
            if !self.set.is_empty() {
                write!(f, ".{}", self.set)?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Only an authenticated user (cluster-describing info commands).
    Describe,
    Read {
        namespace: &'a str,
        set: &'a str,
    },
    Write {
        namespace: &'a str,
        set: &'a str,
    },
    /// `truncate` (set given) or `truncate-namespace` (set empty).
    Truncate {
        namespace: &'a str,
        set: &'a str,
    },
    /// User and role administration of other users.
    UserAdmin,
    /// `get-config`.
    ReadConfig,
    /// `shutdown` and every info command not known to be harmless.
    SysAdmin,
}

/// Whether `privileges` allow `action`.
pub fn allows(privileges: &[Privilege], action: Action<'_>) -> bool {
    use Code::*;
    privileges.iter().any(|p| match action {
        Action::Describe => true,
        Action::Read { namespace, set } => {
            matches!(p.code, Read | ReadWrite | ReadWriteUdf) && p.covers(namespace, set)
        }
        Action::Write { namespace, set } => {
            matches!(p.code, Write | ReadWrite | ReadWriteUdf) && p.covers(namespace, set)
        }
        Action::Truncate { namespace, set } => match p.code {
            SysAdmin | DataAdmin => true,
            Truncate => p.covers(namespace, set),
            _ => false,
        },
        Action::UserAdmin => p.code == UserAdmin,
        Action::ReadConfig => matches!(p.code, SysAdmin | DataAdmin),
        Action::SysAdmin => p.code == SysAdmin,
    }) || action == Action::Describe
}

/// What an info command needs. Commands that only describe the node, its
/// namespaces and counters need authentication only; those that change
/// data or the node need a privilege; anything not listed needs sys-admin,
/// so that a command added later is closed until someone classifies it.
pub fn info_action<'a>(name: &str, params: &'a str) -> Action<'a> {
    use osprey_net::wire::info::param;
    match name {
        "node"
        | "build"
        | "version"
        | "edition"
        | "partition-generation"
        | "rebalance-generation"
        | "partitions"
        | "cluster-name"
        | "replicas"
        | "replicas-all"
        | "replicas-master"
        | "peers-generation"
        | "peers-clear-std"
        | "peers-clear-alt"
        | "peers-tls-std"
        | "peers-tls-alt"
        | "service-clear-std"
        | "service-clear-alt"
        | "service"
        | "services"
        | "services-alumni"
        | "services-alternate"
        | "features"
        | "namespaces"
        | "statistics"
        | "sets"
        | "bins"
        | "sindex"
        | "sindex-list"
        | "udf-list"
        | "query-show"
        | "jobs"
        | "user-agent-set" => Action::Describe,
        "truncate" => Action::Truncate {
            namespace: param(params, "namespace").unwrap_or(""),
            set: param(params, "set").unwrap_or(""),
        },
        "truncate-namespace" => Action::Truncate {
            namespace: param(params, "namespace").unwrap_or(""),
            set: "",
        },
        "get-config" => Action::ReadConfig,
        _ if name.starts_with("namespace/") => Action::Describe,
        _ => Action::SysAdmin,
    }
}

/// Encodes a PRIVILEGES field: `u8 count`, then per privilege `u8 code`
/// and, for scopable codes, `u8 len` + namespace and `u8 len` + set.
pub fn encode(privileges: &[Privilege], out: &mut Vec<u8>) {
    let count = privileges.len().min(255);
    out.push(count as u8);
    for p in &privileges[..count] {
        out.push(p.code as u8);
        if p.code.scopable() {
            for text in [&p.namespace, &p.set] {
                let bytes = &text.as_bytes()[..text.len().min(255)];
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
        }
    }
}

/// Why a PRIVILEGES field was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Truncated or trailing bytes, or text that is not UTF-8 (55).
    Malformed,
    /// An unknown code, or a scope on a global one (72).
    InvalidPrivilege,
}

/// Decodes a PRIVILEGES field (see [`encode`]).
pub fn decode(data: &[u8]) -> Result<Vec<Privilege>, DecodeError> {
    let mut at = 0usize;
    let mut next = |n: usize| -> Result<&[u8], DecodeError> {
        let end = at.checked_add(n).ok_or(DecodeError::Malformed)?;
        let slice = data.get(at..end).ok_or(DecodeError::Malformed)?;
        at = end;
        Ok(slice)
    };
    let count = next(1)?[0];
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let code = Code::from_u8(next(1)?[0]).ok_or(DecodeError::InvalidPrivilege)?;
        let mut privilege = Privilege::global(code);
        if code.scopable() {
            let len = usize::from(next(1)?[0]);
            privilege.namespace = text(next(len)?)?;
            let len = usize::from(next(1)?[0]);
            privilege.set = text(next(len)?)?;
            if privilege.namespace.is_empty() && !privilege.set.is_empty() {
                return Err(DecodeError::InvalidPrivilege);
            }
        }
        out.push(privilege);
    }
    if at != data.len() {
        return Err(DecodeError::Malformed);
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(code: Code, namespace: &str, set: &str) -> Privilege {
        Privilege {
            code,
            namespace: namespace.into(),
            set: set.into(),
        }
    }

    #[test]
    fn read_only_users_cannot_write() {
        let read = [Privilege::global(Code::Read)];
        let r = Action::Read {
            namespace: "test",
            set: "demo",
        };
        let w = Action::Write {
            namespace: "test",
            set: "demo",
        };
        assert!(allows(&read, r));
        assert!(!allows(&read, w));
        let write = [Privilege::global(Code::Write)];
        assert!(allows(&write, w));
        assert!(!allows(&write, r), "write does not read");
        let rw = [Privilege::global(Code::ReadWrite)];
        assert!(allows(&rw, r) && allows(&rw, w));
        assert!(!allows(
            &rw,
            Action::Truncate {
                namespace: "test",
                set: ""
            }
        ));
        assert!(!allows(&rw, Action::UserAdmin));
        assert!(allows(&[], Action::Describe));
        assert!(!allows(&[], r));
    }

    #[test]
    fn scopes_limit_namespace_and_set() {
        let p = [scoped(Code::ReadWrite, "test", "demo")];
        let at = |namespace, set| Action::Write { namespace, set };
        assert!(allows(&p, at("test", "demo")));
        assert!(!allows(&p, at("test", "other")));
        assert!(!allows(&p, at("test", "")));
        assert!(!allows(&p, at("bar", "demo")));
        let ns = [scoped(Code::Read, "test", "")];
        assert!(allows(
            &ns,
            Action::Read {
                namespace: "test",
                set: "any"
            }
        ));
        assert!(!allows(
            &ns,
            Action::Read {
                namespace: "bar",
                set: ""
            }
        ));
    }

    #[test]
    fn admin_roles() {
        let sys = [Privilege::global(Code::SysAdmin)];
        assert!(allows(&sys, Action::SysAdmin));
        assert!(allows(&sys, Action::ReadConfig));
        assert!(!allows(&sys, Action::UserAdmin));
        let data = [Privilege::global(Code::DataAdmin)];
        assert!(!allows(&data, Action::SysAdmin), "shutdown needs sys-admin");
        assert!(allows(
            &data,
            Action::Truncate {
                namespace: "x",
                set: "y"
            }
        ));
        let t = [scoped(Code::Truncate, "test", "")];
        assert!(allows(
            &t,
            Action::Truncate {
                namespace: "test",
                set: "s"
            }
        ));
        assert!(!allows(
            &t,
            Action::Truncate {
                namespace: "other",
                set: ""
            }
        ));
    }

    #[test]
    fn info_commands_are_classified() {
        assert_eq!(info_action("node", ""), Action::Describe);
        assert_eq!(info_action("namespace/test", ""), Action::Describe);
        assert_eq!(info_action("shutdown", ""), Action::SysAdmin);
        assert_eq!(info_action("set-config", "x=1"), Action::SysAdmin);
        assert_eq!(info_action("get-config", ""), Action::ReadConfig);
        assert_eq!(
            info_action("truncate", "namespace=test;set=demo"),
            Action::Truncate {
                namespace: "test",
                set: "demo"
            }
        );
    }

    #[test]
    fn privileges_round_trip_and_bad_fields_are_refused() {
        let list = vec![
            Privilege::global(Code::UserAdmin),
            scoped(Code::Read, "test", ""),
            scoped(Code::ReadWrite, "test", "demo"),
        ];
        let mut out = Vec::new();
        encode(&list, &mut out);
        assert_eq!(out[0], 3);
        assert_eq!(decode(&out).unwrap(), list);
        assert_eq!(decode(&out[..out.len() - 1]), Err(DecodeError::Malformed));
        assert_eq!(decode(&[1, 99]), Err(DecodeError::InvalidPrivilege));
        assert_eq!(
            decode(&[1, 10, 0, 1, b's']),
            Err(DecodeError::InvalidPrivilege)
        );
        assert_eq!(decode(&[]), Err(DecodeError::Malformed));
        for (code, name) in CODES {
            assert_eq!(predefined_role(name), Some(code));
            assert_eq!(Code::from_u8(code as u8), Some(code));
        }
    }
}
