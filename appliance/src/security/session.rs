//! One core's sessions: who each of its connections is logged in as, the
//! check every request passes, and LOGINs parked by the throttle.
//!
//! A connection is authenticated by LOGIN (user + client hash) or by
//! AUTHENTICATE (user + a token from an earlier LOGIN). It stays
//! authenticated until it closes, its user is dropped, or a later LOGIN or
//! AUTHENTICATE on it fails; the token's expiry limits AUTHENTICATE on new
//! connections, not the life of a connection already authenticated (as in
//! Aerospike: "a connection attempt with an expired token fails"). The
//! privileges are resolved once and cached with the table epoch they came
//! from; a request re-resolves them only when the epoch moved.
//!
//! No pre-login exemptions: both clients send LOGIN (or AUTHENTICATE)
//! before anything else on every socket (spec §9.2), so with security on
//! every info and data command of an unauthenticated connection gets 80.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use osprey_net::reactor::{ConnId, Handled};
use osprey_net::wire::admin::{self, AdminRequest};

use super::privilege::{allows, Action, Privilege};
use super::{code, shown, Security};
use crate::daemon::log;

/// Violation log lines per core and second at most (the rest are counted).
const VIOLATION_LOGS_PER_SECOND: u32 = 10;

pub(crate) struct Auth {
    pub user: String,
    pub epoch: u64,
    pub privileges: Arc<[Privilege]>,
}

#[derive(Default)]
pub(crate) struct Session {
    pub peer: Option<SocketAddr>,
    pub auth: Option<Auth>,
}

struct ParkedLogin {
    conn: ConnId,
    due: Instant,
    user: Vec<u8>,
    credential: Vec<u8>,
    reported: bool,
}

pub struct CoreSecurity {
    shared: Arc<Security>,
    sessions: HashMap<ConnId, Session>,
    parked: Vec<ParkedLogin>,
    log_second: u64,
    logged_this_second: u32,
    suppressed: u64,
}

impl CoreSecurity {
    pub fn new(shared: Arc<Security>) -> CoreSecurity {
        CoreSecurity {
            shared,
            sessions: HashMap::new(),
            parked: Vec::new(),
            log_second: 0,
            logged_this_second: 0,
            suppressed: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.shared.enabled()
    }

    pub fn opened(&mut self, conn: ConnId, peer: Option<SocketAddr>) {
        if self.shared.enabled() {
            self.sessions.insert(conn, Session { peer, auth: None });
        }
    }

    pub fn closed(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
        self.parked.retain(|p| p.conn != conn);
    }

    /// Logs a security event, at most [`VIOLATION_LOGS_PER_SECOND`] a
    /// second from this core (a client can make violations at will).
    pub(crate) fn event(&mut self, level: &str, message: &str) {
        let second = super::now_unix_s();
        if second != self.log_second {
            if self.suppressed > 0 {
                log(
                    "warn",
                    &format!(
                        "security: {} more events not logged in the last second",
                        self.suppressed
                    ),
                );
            }
            self.log_second = second;
            self.logged_this_second = 0;
            self.suppressed = 0;
        }
        if self.logged_this_second >= VIOLATION_LOGS_PER_SECOND {
            self.suppressed += 1;
            return;
        }
        self.logged_this_second += 1;
        log(level, message);
    }

    /// Brings a session's privileges up to date with the table; drops the
    /// authentication of a user that no longer exists.
    fn refresh(shared: &Security, session: &mut Session) {
        let epoch = shared.epoch();
        let Some(auth) = &session.auth else { return };
        if auth.epoch == epoch {
            return;
        }
        let table = shared.table();
        session.auth = table.users.get(&auth.user).map(|user| Auth {
            user: user.name.clone(),
            epoch,
            privileges: Security::privileges(&table, user).into(),
        });
    }

    /// Whether `conn` may do `action`: Ok, or 80 / 81.
    pub fn check(&mut self, conn: ConnId, action: Action<'_>) -> Result<(), u8> {
        if !self.shared.enabled() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let session = self.sessions.entry(conn).or_default();
        Self::refresh(&shared, session);
        let Some(auth) = &session.auth else {
            return Err(code::NOT_AUTHENTICATED);
        };
        if allows(&auth.privileges, action) {
            return Ok(());
        }
        let message = format!(
            "security: role violation: user {:?} from {} may not {action:?}",
            auth.user,
            shown(session.peer)
        );
        self.event("warn", &message);
        Err(code::ROLE_VIOLATION)
    }

    /// Whether `conn` is authenticated at all (80 if not).
    pub fn authenticated(&mut self, conn: ConnId) -> Result<(), u8> {
        self.check(conn, Action::Describe)
    }

    /// The `ERROR:` value for an info command `conn` may not run.
    pub fn info_refusal(&mut self, conn: ConnId, name: &str, params: &str) -> Option<String> {
        match self.check(conn, super::privilege::info_action(name, params)) {
            Ok(()) => None,
            Err(code::NOT_AUTHENTICATED) => Some("ERROR:80:not authenticated".into()),
            Err(_) => Some("ERROR:81:role violation".into()),
        }
    }

    /// An admin frame (already parsed).
    pub fn on_admin(
        &mut self,
        conn: ConnId,
        request: &AdminRequest<'_>,
        out: &mut Vec<u8>,
    ) -> Handled {
        if !self.shared.enabled() {
            // Both clients then carry on unauthenticated, even with
            // credentials (spec §9.2).
            admin::write_reply(out, code::SECURITY_NOT_ENABLED, &[]);
            return Handled::Replied;
        }
        if request.command == admin::LOGIN {
            let user = request.field(admin::FIELD_USER).unwrap_or_default();
            let credential = request.field(admin::FIELD_CREDENTIAL).unwrap_or_default();
            let peer = self.sessions.entry(conn).or_default().peer;
            let now = Instant::now();
            let due = self.shared.throttle().schedule(peer.map(|p| p.ip()), now);
            if due > now {
                self.parked.push(ParkedLogin {
                    conn,
                    due,
                    user: user.to_vec(),
                    credential: credential.to_vec(),
                    reported: false,
                });
                return Handled::Pending;
            }
            self.login(conn, user, credential, out);
            return Handled::Replied;
        }
        let shared = self.shared.clone();
        let session = self.sessions.entry(conn).or_default();
        Self::refresh(&shared, session);
        let result = super::admin::handle(&shared, session, request, out);
        if let Some((level, message)) = result {
            self.event(level, &message);
        }
        Handled::Replied
    }

    fn login(&mut self, conn: ConnId, user: &[u8], credential: &[u8], out: &mut Vec<u8>) {
        let shared = self.shared.clone();
        let session = self.sessions.entry(conn).or_default();
        let peer = session.peer;
        let name = String::from_utf8_lossy(user).into_owned();
        let table = shared.table();
        let outcome = match table.users.get(name.as_str()) {
            None => Err(code::INVALID_USER),
            Some(u) if !shared.verify_credential(u, credential) => Err(code::INVALID_CREDENTIAL),
            Some(u) => Ok(u),
        };
        match outcome {
            Ok(user) => {
                shared.throttle().succeeded(peer.map(|p| p.ip()));
                let token = shared.issue_token(user);
                session.auth = Some(Auth {
                    user: user.name.clone(),
                    epoch: shared.epoch(),
                    privileges: Security::privileges(&table, user).into(),
                });
                admin::write_reply(
                    out,
                    code::OK,
                    &[
                        (admin::FIELD_SESSION_TOKEN, &token),
                        (
                            admin::FIELD_SESSION_TTL,
                            &shared.session_ttl_s().to_be_bytes(),
                        ),
                    ],
                );
                log(
                    "info",
                    &format!("security: login: user {name:?} from {}", shown(peer)),
                );
            }
            Err(result) => {
                session.auth = None;
                shared
                    .throttle()
                    .failed(peer.map(|p| p.ip()), Instant::now());
                admin::write_reply(out, result, &[]);
                let why = if result == code::INVALID_USER {
                    "no such user"
                } else {
                    "wrong password"
                };
                self.event(
                    "warn",
                    &format!(
                        "security: login failed: user {name:?} from {}: {why}",
                        shown(peer)
                    ),
                );
            }
        }
    }

    /// Reports parked LOGINs whose time has come.
    pub fn poll(&mut self, ready: &mut Vec<ConnId>) -> bool {
        if self.parked.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut any = false;
        for p in self
            .parked
            .iter_mut()
            .filter(|p| !p.reported && p.due <= now)
        {
            p.reported = true;
            ready.push(p.conn);
            any = true;
        }
        any
    }

    /// Answers a parked LOGIN of `conn`; `None` if `conn` has none.
    pub fn resume(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Option<Handled> {
        let i = self.parked.iter().position(|p| p.conn == conn)?;
        if !self.parked[i].reported {
            return Some(Handled::Pending);
        }
        let parked = self.parked.swap_remove(i);
        self.login(conn, &parked.user, &parked.credential, out);
        Some(Handled::Replied)
    }
}
