//! Authentication and authorization (spec §9): users and roles, LOGIN and
//! session tokens, and the privilege check every request passes.
//!
//! Owns: the user/role table ([`store::Table`], shared by all cores behind
//! an `RwLock<Arc<_>>`, persisted by [`store`]), the node's token secret,
//! the login throttle and the verified-credential cache. Each core keeps its
//! connections' sessions in a [`session::CoreSecurity`].
//!
//! Threading: the data path only reads. A request checks its connection's
//! cached privileges and one atomic (the table epoch); only when an admin
//! change bumped the epoch does it take the read lock to re-resolve them.
//! Admin changes (rare) take a mutex, copy the table, change the copy, write
//! the store file, swap the copy in and bump the epoch.
//!
//! Never: stores a password or a client hash (only salted bcrypt of the
//! client hash), sleeps on a reactor (a throttled LOGIN is parked and
//! answered from `Service::poll`), or lets a request through without a
//! check when security is enabled.
//!
//! Blocking work on the reactor, by choice: a bcrypt (~50-100 ms at cost
//! 10) for CREATE_USER / SET_PASSWORD / CHANGE_PASSWORD, and for a LOGIN
//! whose user has no verified credential cached since start (the first
//! login of each user after a restart or password change, and wrong
//! passwords before that; wrong passwords are throttled per address), and
//! the store's fsyncs on admin changes. All are rare next to data requests.

pub mod admin;
pub mod password;
pub mod privilege;
pub mod session;
pub mod store;
pub mod throttle;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::SecurityConfig;
use crate::daemon::log;
use privilege::{predefined_role, Privilege};
use store::{Table, User};

/// Environment variable that gives the initial admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "OSPREY_ADMIN_PASSWORD";
/// Roles of the admin user created on first start.
pub const ADMIN_ROLES: [&str; 4] = ["user-admin", "sys-admin", "data-admin", "read-write"];
/// Addresses the login throttle remembers at most.
pub const THROTTLE_ADDRESSES: usize = 4096;
/// Longest user and role names, in bytes (clients keep them under 64).
pub const MAX_NAME_BYTES: usize = 63;

/// Result codes of the admin protocol and the security checks (spec §8).
pub mod code {
    pub const OK: u8 = 0;
    pub const SERVER_ERROR: u8 = 1;
    pub const UNSUPPORTED: u8 = 16;
    pub const QUERY_END: u8 = 50;
    pub const SECURITY_NOT_ENABLED: u8 = 52;
    pub const INVALID_COMMAND: u8 = 54;
    pub const INVALID_FIELD: u8 = 55;
    pub const INVALID_USER: u8 = 60;
    pub const USER_EXISTS: u8 = 61;
    pub const INVALID_PASSWORD: u8 = 62;
    pub const INVALID_CREDENTIAL: u8 = 65;
    pub const EXPIRED_SESSION: u8 = 66;
    pub const INVALID_ROLE: u8 = 70;
    pub const ROLE_EXISTS: u8 = 71;
    pub const INVALID_PRIVILEGE: u8 = 72;
    pub const NOT_AUTHENTICATED: u8 = 80;
    pub const ROLE_VIOLATION: u8 = 81;
}

/// The security state all cores share.
pub struct Security {
    enabled: bool,
    session_ttl_s: u32,
    hash_cost: u32,
    store_path: Option<PathBuf>,
    /// Keys session-token MACs; random per start, never stored.
    secret: [u8; 32],
    table: RwLock<Arc<Table>>,
    /// Bumped after every change of `table`.
    epoch: AtomicU64,
    /// Serialises admin changes (read-copy-write-swap).
    change: Mutex<()>,
    verified: Mutex<password::VerifiedCache>,
    throttle: Mutex<throttle::Throttle>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
}

pub fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `ip` or `unknown address`, for log lines.
pub fn shown(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown address".to_string(), |p| p.to_string())
}

impl Security {
    /// Security off: admin commands answer 52, every request is allowed.
    pub fn disabled() -> Security {
        Security::with_table(false, &SecurityConfig::default(), Table::default())
    }

    fn with_table(enabled: bool, config: &SecurityConfig, table: Table) -> Security {
        let secret = random_bytes::<32>();
        Security {
            enabled,
            session_ttl_s: config.session_ttl_s,
            hash_cost: config.password_hash_cost,
            store_path: config.store.clone(),
            secret,
            table: RwLock::new(Arc::new(table)),
            epoch: AtomicU64::new(1),
            change: Mutex::new(()),
            // Its own key, so the two MACs never share one.
            verified: Mutex::new(password::VerifiedCache::new(random_bytes::<32>())),
            throttle: Mutex::new(throttle::Throttle::new(
                Duration::from_millis(config.login_failure_delay_ms),
                Duration::from_millis(config.login_failure_max_delay_ms),
                THROTTLE_ADDRESSES,
            )),
        }
    }

    /// Start-up: loads the store, or creates it with the admin user when it
    /// does not exist. `env_password` is `$OSPREY_ADMIN_PASSWORD`.
    pub fn start(
        config: &SecurityConfig,
        env_password: Option<String>,
    ) -> Result<Security, String> {
        if !config.enabled {
            return Ok(Security::disabled());
        }
        let path = config
            .store
            .clone()
            .ok_or("security.store: no path for the user store (set security.store)")?;
        if let Some(table) = store::load(&path)? {
            log(
                "info",
                &format!(
                    "security: enabled; {} user(s) and {} custom role(s) from {}",
                    table.users.len(),
                    table.roles.len(),
                    path.display()
                ),
            );
            if config.admin_password_file.is_some() || env_password.is_some() {
                log(
                    "info",
                    "security: the store exists, so the initial admin password given is not used",
                );
            }
            return Ok(Security::with_table(true, config, table));
        }
        let password = match (&config.admin_password_file, env_password) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    format!(
                        "security.admin-password-file: cannot read {}: {e}",
                        file.display()
                    )
                })?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
            (None, Some(p)) => p,
            (None, None) => {
                return Err(format!(
                    "security is enabled and the user store {} does not exist yet, so an admin \
                     user {:?} must be created, but no password was given for it: set \
                     security.admin-password-file to a file holding the password, or set the \
                     environment variable {ADMIN_PASSWORD_ENV}",
                    path.display(),
                    config.admin_user
                ))
            }
        };
        if password.is_empty() || password.len() > password::MAX_PASSWORD_BYTES {
            return Err(format!(
                "security: the initial admin password must be 1..={} bytes (got {})",
                password::MAX_PASSWORD_BYTES,
                password.len()
            ));
        }
        let credential = password::client_hash(&password);
        let mut table = Table::default();
        let generation = table.take_generation();
        table.users.insert(
            config.admin_user.clone(),
            User {
                name: config.admin_user.clone(),
                password_hash: password::server_hash(
                    credential.as_bytes(),
                    config.password_hash_cost,
                )?,
                generation,
                roles: ADMIN_ROLES.iter().map(|r| r.to_string()).collect(),
            },
        );
        store::save(&path, &table)?;
        log(
            "info",
            &format!(
                "security: enabled; created user store {} with admin user {:?} (roles {})",
                path.display(),
                config.admin_user,
                ADMIN_ROLES.join(", ")
            ),
        );
        let security = Security::with_table(true, config, table);
        security
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(&config.admin_user, generation, credential.as_bytes());
        Ok(security)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn session_ttl_s(&self) -> u32 {
        self.session_ttl_s
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The current table (a cheap `Arc` clone under the read lock).
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A user's privileges: the predefined roles' global privileges and the
    /// custom roles' lists. Roles that no longer exist give nothing.
    pub fn privileges(table: &Table, user: &User) -> Vec<Privilege> {
        let mut out = Vec::new();
        for role in &user.roles {
            if let Some(code) = predefined_role(role) {
                out.push(Privilege::global(code));
            } else if let Some(custom) = table.roles.get(role) {
                out.extend(custom.privileges.iter().cloned());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether `credential` (a client hash) is `user`'s password.
    pub fn verify_credential(&self, user: &User, credential: &[u8]) -> bool {
        if !password::is_client_hash(credential) {
            return false;
        }
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&user.name, user.generation, credential);
        match cached {
            Some(matches) => matches,
            None => {
                let ok = password::verify(credential, &user.password_hash);
                if ok {
                    self.verified
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remember(&user.name, user.generation, credential);
                }
                ok
            }
        }
    }

    /// A new session token for `user`.
    pub fn issue_token(&self, user: &User) -> Vec<u8> {
        let expiry = now_unix_s() + u64::from(self.session_ttl_s);
        token::issue(
            &self.secret,
            &user.name,
            expiry,
            user.generation,
            random_bytes::<16>(),
        )
    }

    /// AUTHENTICATE: the user's record when the token is valid, else the
    /// result code (65 forged, 66 expired or out of date, 60 no such user).
    pub fn check_token(&self, name: &str, token: &[u8]) -> Result<User, u8> {
        let claims = match token::check(&self.secret, name, token, now_unix_s()) {
            Ok(c) => c,
            Err(token::TokenError::Forged) => return Err(code::INVALID_CREDENTIAL),
            Err(token::TokenError::Expired) => return Err(code::EXPIRED_SESSION),
        };
        let table = self.table();
        let user = table.users.get(name).ok_or(code::INVALID_USER)?;
        if user.generation != claims.generation {
            // The password changed since (or the user was dropped and made
            // again): the client logs in again.
            return Err(code::EXPIRED_SESSION);
        }
        Ok(user.clone())
    }

    /// The server hash for a new password (a bcrypt, on the caller's thread).
    pub fn hash_credential(&self, credential: &[u8]) -> Result<String, u8> {
        password::server_hash(credential, self.hash_cost).map_err(|e| {
            log("error", &format!("security: {e}"));
            code::SERVER_ERROR
        })
    }

    /// Remembers a credential just set, so its first login costs no bcrypt.
    pub fn remember_credential(&self, name: &str, generation: u64, credential: &[u8]) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(name, generation, credential);
    }

    /// Applies an admin change: copy, change, write the store, swap, bump
    /// the epoch. A failed store write leaves the table as it was (1).
    pub fn change<T>(&self, apply: impl FnOnce(&mut Table) -> Result<T, u8>) -> Result<T, u8> {
        let _serial = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let mut copy = (*self.table()).clone();
        let result = apply(&mut copy)?;
        if let Some(path) = &self.store_path {
            if let Err(e) = store::save(path, &copy) {
                log("error", &format!("security: change not applied: {e}"));
                return Err(code::SERVER_ERROR);
            }
        }
        // Entries of other generations never match; only dropped users'
        // entries need to go.
        let old = self.table();
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        for name in old.users.keys().filter(|n| !copy.users.contains_key(*n)) {
            verified.forget(name);
        }
        drop(verified);
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(copy);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(result)
    }

    pub(crate) fn throttle(&self) -> std::sync::MutexGuard<'_, throttle::Throttle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }
}
