//! The admin commands other than LOGIN (spec §9.2, §9.3): AUTHENTICATE,
//! user and role administration and the two queries.
//!
//! Each command is checked, applied through [`Security::change`] (which
//! writes the store) and answered with a 24-byte reply, or, for the
//! queries, a stream of records ending with result 50. Who may do what:
//! user-admin for everything here, except that any authenticated user may
//! change their own password (CHANGE_PASSWORD with the old one), query
//! themselves, and query a role they hold.
//!
//! SET_ALLOWLIST, SET_QUOTAS, and CREATE_ROLE with a non-empty allowlist
//! or quotas answer 16 (unsupported): Osprey does not enforce them, and
//! storing a restriction that is not enforced would mislead.

use osprey_net::wire::admin::{self, AdminRequest};

use super::privilege::{self, predefined_role, Privilege, CODES};
use super::session::{Auth, Session};
use super::store::{Role, Table, User};
use super::{code, password, shown, Security, MAX_NAME_BYTES};

/// A log line for the caller: (level, message).
pub type Event = Option<(&'static str, String)>;

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

fn text(data: Option<&[u8]>) -> Option<String> {
    data.and_then(|d| std::str::from_utf8(d).ok())
        .map(str::to_string)
}

/// Decodes a ROLES field: `u8 count`, then per role `u8 len` + name.
pub fn decode_roles(data: &[u8]) -> Option<Vec<String>> {
    let (&count, mut rest) = data.split_first()?;
    let mut roles = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (&len, tail) = rest.split_first()?;
        let len = usize::from(len);
        let name = std::str::from_utf8(tail.get(..len)?).ok()?;
        roles.push(name.to_string());
        rest = &tail[len..];
    }
    rest.is_empty().then_some(roles)
}

/// Encodes a ROLES field.
pub fn encode_roles(roles: &[String], out: &mut Vec<u8>) {
    let count = roles.len().min(255);
    out.push(count as u8);
    for role in &roles[..count] {
        let bytes = &role.as_bytes()[..role.len().min(255)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
}

fn role_exists(table: &Table, name: &str) -> bool {
    predefined_role(name).is_some() || table.roles.contains_key(name)
}

/// Handles one admin request on an authenticated-or-not session.
pub(crate) fn handle(
    shared: &Security,
    session: &mut Session,
    request: &AdminRequest<'_>,
    out: &mut Vec<u8>,
) -> Event {
    let peer = shown(session.peer);
    if request.command == admin::AUTHENTICATE {
        let name = text(request.field(admin::FIELD_USER)).unwrap_or_default();
        let token = request
            .field(admin::FIELD_SESSION_TOKEN)
            .unwrap_or_default();
        return match shared.check_token(&name, token) {
            Ok(user) => {
                let table = shared.table();
                session.auth = Some(Auth {
                    user: user.name.clone(),
                    epoch: shared.epoch(),
                    privileges: Security::privileges(&table, &user).into(),
                });
                // Not logged: clients authenticate every new socket.
                admin::write_reply(out, code::OK, &[]);
                None
            }
            Err(result) => {
                session.auth = None;
                admin::write_reply(out, result, &[]);
                Some((
                    "warn",
                    format!(
                        "security: authenticate failed: user {name:?} from {peer}: result {result}"
                    ),
                ))
            }
        };
    }
    let Some(auth) = &session.auth else {
        admin::write_reply(out, code::NOT_AUTHENTICATED, &[]);
        return Some((
            "warn",
            format!(
                "security: admin command {} from {peer} before login",
                request.command
            ),
        ));
    };
    let actor = auth.user.clone();
    let is_admin = privilege::allows(&auth.privileges, privilege::Action::UserAdmin);
    let target_user = text(request.field(admin::FIELD_USER));
    let self_service = match request.command {
        admin::CHANGE_PASSWORD | admin::QUERY_USERS => target_user.as_deref() == Some(&actor),
        admin::QUERY_ROLES => {
            let table = shared.table();
            let role = text(request.field(admin::FIELD_ROLE));
            match (role, table.users.get(&actor)) {
                (Some(role), Some(user)) => user.roles.contains(&role),
                _ => false,
            }
        }
        _ => false,
    };
    if !is_admin && !self_service {
        admin::write_reply(out, code::ROLE_VIOLATION, &[]);
        return Some((
            "warn",
            format!(
                "security: role violation: user {actor:?} from {peer} may not run admin command {}",
                request.command
            ),
        ));
    }
    match request.command {
        admin::QUERY_USERS => {
            query_users(shared, target_user.as_deref(), out);
            return None;
        }
        admin::QUERY_ROLES => {
            query_roles(
                shared,
                text(request.field(admin::FIELD_ROLE)).as_deref(),
                out,
            );
            return None;
        }
        _ => {}
    }
    let (result, what) = match change(shared, request) {
        Ok(what) => (code::OK, what),
        Err((result, what)) => (result, what),
    };
    admin::write_reply(out, result, &[]);
    let level = if result == code::OK { "info" } else { "warn" };
    let outcome = if result == code::OK {
        "done".to_string()
    } else {
        format!("refused with result {result}")
    };
    Some((
        level,
        format!("security: user {actor:?} from {peer}: {what}: {outcome}"),
    ))
}

type Outcome = Result<String, (u8, String)>;

/// Applies a changing command; `Ok(description)` or `Err((result,
/// description))`.
fn change(shared: &Security, request: &AdminRequest<'_>) -> Outcome {
    let user = text(request.field(admin::FIELD_USER)).unwrap_or_default();
    let role = text(request.field(admin::FIELD_ROLE)).unwrap_or_default();
    let roles = match request.field(admin::FIELD_ROLES) {
        None => Some(Vec::new()),
        Some(d) => decode_roles(d),
    };
    let fail = |result: u8, what: String| Err((result, what));
    match request.command {
        admin::CREATE_USER => {
            let what = format!("create user {user:?}");
            if !name_ok(&user) {
                return fail(code::INVALID_USER, what);
            }
            let Some(credential) = request.field(admin::FIELD_PASSWORD) else {
                return fail(code::INVALID_PASSWORD, what);
            };
            if !password::is_client_hash(credential) {
                return fail(code::INVALID_PASSWORD, what);
            }
            let Some(roles) = roles else {
                return fail(code::INVALID_FIELD, what);
            };
            let what = format!("create user {user:?} with roles [{}]", roles.join(", "));
            {
                let table = shared.table();
                if table.users.contains_key(&user) {
                    return fail(code::USER_EXISTS, what);
                }
                if let Some(bad) = roles.iter().find(|r| !role_exists(&table, r)) {
                    return fail(code::INVALID_ROLE, format!("{what} (no role {bad:?})"));
                }
            }
            // The bcrypt runs outside the change lock.
            let hash = shared
                .hash_credential(credential)
                .map_err(|r| (r, what.clone()))?;
            let generation = shared
                .change(|t| {
                    if t.users.contains_key(&user) {
                        return Err(code::USER_EXISTS);
                    }
                    if roles.iter().any(|r| !role_exists(t, r)) {
                        return Err(code::INVALID_ROLE);
                    }
                    let generation = t.take_generation();
                    let mut unique = roles.clone();
                    unique.dedup();
                    t.users.insert(
                        user.clone(),
                        User {
                            name: user.clone(),
                            password_hash: hash,
                            generation,
                            roles: unique,
                        },
                    );
                    Ok(generation)
                })
                .map_err(|r| (r, what.clone()))?;
            shared.remember_credential(&user, generation, credential);
            Ok(what)
        }
        admin::DROP_USER => {
            let what = format!("drop user {user:?}");
            shared
                .change(|t| t.users.remove(&user).map(|_| ()).ok_or(code::INVALID_USER))
                .map_err(|r| (r, what.clone()))?;
            Ok(what)
        }
        admin::SET_PASSWORD | admin::CHANGE_PASSWORD => {
            let what = format!("set the password of user {user:?}");
            let Some(credential) = request.field(admin::FIELD_PASSWORD) else {
                return fail(code::INVALID_PASSWORD, what);
            };
            if !password::is_client_hash(credential) {
                return fail(code::INVALID_PASSWORD, what);
            }
            let Some(current) = shared.table().users.get(&user).cloned() else {
                return fail(code::INVALID_USER, what);
            };
            if request.command == admin::CHANGE_PASSWORD {
                let old = request.field(admin::FIELD_OLD_PASSWORD).unwrap_or_default();
                if !shared.verify_credential(&current, old) {
                    return fail(
                        code::INVALID_CREDENTIAL,
                        format!("{what} (old password wrong)"),
                    );
                }
            }
            let hash = shared
                .hash_credential(credential)
                .map_err(|r| (r, what.clone()))?;
            let generation = shared
                .change(|t| {
                    let u = t.users.get(&user).ok_or(code::INVALID_USER)?.clone();
                    if u.generation != current.generation {
                        // Changed meanwhile by someone else: do not undo it.
                        return Err(code::SERVER_ERROR);
                    }
                    let generation = t.take_generation();
                    t.users.insert(
                        user.clone(),
                        User {
                            password_hash: hash,
                            generation,
                            ..u
                        },
                    );
                    Ok(generation)
                })
                .map_err(|r| (r, what.clone()))?;
            shared.remember_credential(&user, generation, credential);
            Ok(what)
        }
        admin::GRANT_ROLES | admin::REVOKE_ROLES => {
            let grant = request.command == admin::GRANT_ROLES;
            let Some(roles) = roles.filter(|r| !r.is_empty()) else {
                return fail(code::INVALID_ROLE, format!("change roles of user {user:?}"));
            };
            let what = format!(
                "{} roles [{}] {} user {user:?}",
                if grant { "grant" } else { "revoke" },
                roles.join(", "),
                if grant { "to" } else { "from" }
            );
            shared
                .change(|t| {
                    if grant && roles.iter().any(|r| !role_exists(t, r)) {
                        return Err(code::INVALID_ROLE);
                    }
                    let u = t.users.get_mut(&user).ok_or(code::INVALID_USER)?;
                    for r in &roles {
                        if grant && !u.roles.contains(r) {
                            u.roles.push(r.clone());
                        } else if !grant {
                            u.roles.retain(|x| x != r);
                        }
                    }
                    Ok(())
                })
                .map_err(|r| (r, what.clone()))?;
            Ok(what)
        }
        admin::CREATE_ROLE => {
            let what = format!("create role {role:?}");
            if !name_ok(&role) {
                return fail(code::INVALID_ROLE, what);
            }
            let privileges = match request.field(admin::FIELD_PRIVILEGES) {
                None => Vec::new(),
                Some(d) => privileges(d).map_err(|r| (r, what.clone()))?,
            };
            let allowlist = request.field(admin::FIELD_ALLOWLIST).unwrap_or_default();
            let quota = |id| {
                request
                    .field(id)
                    .is_some_and(|d: &[u8]| d.iter().any(|b| *b != 0))
            };
            if !allowlist.is_empty()
                || quota(admin::FIELD_READ_QUOTA)
                || quota(admin::FIELD_WRITE_QUOTA)
            {
                return fail(
                    code::UNSUPPORTED,
                    format!("{what} (allowlists and quotas are not supported)"),
                );
            }
            let what = format!(
                "create role {role:?} with privileges [{}]",
                privileges
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            shared
                .change(|t| {
                    if role_exists(t, &role) {
                        return Err(code::ROLE_EXISTS);
                    }
                    let mut privileges = privileges.clone();
                    privileges.sort();
                    privileges.dedup();
                    t.roles.insert(
                        role.clone(),
                        Role {
                            name: role.clone(),
                            privileges,
                            ..Role::default()
                        },
                    );
                    Ok(())
                })
                .map_err(|r| (r, what.clone()))?;
            Ok(what)
        }
        admin::DROP_ROLE => {
            let what = format!("drop role {role:?}");
            shared
                .change(|t| {
                    t.roles.remove(&role).ok_or(code::INVALID_ROLE)?;
                    for u in t.users.values_mut() {
                        u.roles.retain(|r| *r != role);
                    }
                    Ok(())
                })
                .map_err(|r| (r, what.clone()))?;
            Ok(what)
        }
        admin::GRANT_PRIVILEGES | admin::REVOKE_PRIVILEGES => {
            let grant = request.command == admin::GRANT_PRIVILEGES;
            let what = format!(
                "{} privileges of role {role:?}",
                if grant { "grant" } else { "revoke" }
            );
            let Some(data) = request.field(admin::FIELD_PRIVILEGES) else {
                return fail(code::INVALID_PRIVILEGE, what);
            };
            let list = privileges(data).map_err(|r| (r, what.clone()))?;
            let what = format!(
                "{} privileges [{}] {} role {role:?}",
                if grant { "grant" } else { "revoke" },
                list.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if grant { "to" } else { "from" }
            );
            shared
                .change(|t| {
                    let r = t.roles.get_mut(&role).ok_or(code::INVALID_ROLE)?;
                    for p in &list {
                        if grant && !r.privileges.contains(p) {
                            r.privileges.push(p.clone());
                        } else if !grant {
                            r.privileges.retain(|x| x != p);
                        }
                    }
                    r.privileges.sort();
                    Ok(())
                })
                .map_err(|r| (r, what.clone()))?;
            Ok(what)
        }
        admin::SET_ALLOWLIST | admin::SET_QUOTAS => fail(
            code::UNSUPPORTED,
            format!("set allowlist or quotas of role {role:?} (not supported)"),
        ),
        other => fail(code::INVALID_COMMAND, format!("admin command {other}")),
    }
}

fn privileges(data: &[u8]) -> Result<Vec<Privilege>, u8> {
    privilege::decode(data).map_err(|e| match e {
        privilege::DecodeError::Malformed => code::INVALID_FIELD,
        privilege::DecodeError::InvalidPrivilege => code::INVALID_PRIVILEGE,
    })
}

/// QUERY_USERS: one record per user (or the one asked for), then the end
/// record (50), all in one frame. An unknown user is a lone record 60.
fn query_users(shared: &Security, only: Option<&str>, out: &mut Vec<u8>) {
    let table = shared.table();
    let users: Vec<&User> = match only {
        Some(name) => match table.users.get(name) {
            Some(u) => vec![u],
            None => {
                stream(out, |out| admin::push_record(out, code::INVALID_USER, &[]));
                return;
            }
        },
        None => table.users.values().collect(),
    };
    stream(out, |out| {
        for user in users {
            let mut roles = Vec::new();
            encode_roles(&user.roles, &mut roles);
            admin::push_record(
                out,
                code::OK,
                &[
                    (admin::FIELD_USER, user.name.as_bytes()),
                    (admin::FIELD_ROLES, &roles),
                    (admin::FIELD_READ_INFO, &[0]),
                    (admin::FIELD_WRITE_INFO, &[0]),
                    (admin::FIELD_CONNECTIONS, &0u32.to_be_bytes()),
                ],
            );
        }
        admin::push_record(out, code::QUERY_END, &[]);
    });
}

/// QUERY_ROLES: the predefined roles and the custom ones (or the one asked
/// for), then the end record.
fn query_roles(shared: &Security, only: Option<&str>, out: &mut Vec<u8>) {
    let table = shared.table();
    let mut roles: Vec<(String, Vec<Privilege>)> = CODES
        .iter()
        .map(|(c, n)| (n.to_string(), vec![Privilege::global(*c)]))
        .collect();
    roles.extend(
        table
            .roles
            .values()
            .map(|r| (r.name.clone(), r.privileges.clone())),
    );
    if let Some(name) = only {
        roles.retain(|(n, _)| n == name);
        if roles.is_empty() {
            stream(out, |out| admin::push_record(out, code::INVALID_ROLE, &[]));
            return;
        }
    }
    stream(out, |out| {
        for (name, privileges) in &roles {
            let mut field = Vec::new();
            privilege::encode(privileges, &mut field);
            admin::push_record(
                out,
                code::OK,
                &[
                    (admin::FIELD_ROLE, name.as_bytes()),
                    (admin::FIELD_PRIVILEGES, &field),
                ],
            );
        }
        admin::push_record(out, code::QUERY_END, &[]);
    });
}

/// One type-2 frame holding the records `fill` appends.
fn stream(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let start =
        osprey_net::wire::proto::begin_frame(out, osprey_net::wire::proto::FrameKind::Admin);
    fill(out);
    osprey_net::wire::proto::end_frame(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_field_round_trip() {
        let roles = vec!["read-write".to_string(), "x".to_string()];
        let mut out = Vec::new();
        encode_roles(&roles, &mut out);
        assert_eq!(&out[..12], b"\x02\x0aread-write");
        assert_eq!(decode_roles(&out), Some(roles));
        assert_eq!(decode_roles(&out[..out.len() - 1]), None);
        assert_eq!(decode_roles(&[]), None);
        assert_eq!(decode_roles(&[0]), Some(vec![]));
    }

    #[test]
    fn names_are_checked() {
        assert!(name_ok("alice"));
        assert!(!name_ok(""));
        assert!(!name_ok(&"a".repeat(64)));
        assert!(!name_ok("a\tb"));
    }
}
