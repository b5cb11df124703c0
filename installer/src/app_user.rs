//! The service's user and group: who runs the app's hooks (`check`,
//! `migrate`, the host's `[hooks] check`) and who owns the directories
//! slipway creates for the app (the persistence directory and its `meta/`).
//!
//! The app is untrusted (SPEC §6): its hooks run with exactly the
//! privileges the app has when it runs, never root's. Which user that is:
//!
//! | configured | user | group |
//! | --- | --- | --- |
//! | `[service] user` / `group` | that user | that group, else the user's primary group |
//! | neither, `manager = "systemd"` | the unit's `User=` (`systemctl show -p User,Group`) | its `Group=`, else the user's primary group |
//! | neither, another manager | root | root |
//!
//! A unit without `User=` runs as root, and so do its hooks. Names are looked
//! up in `/etc/passwd` and `/etc/group`, then through `getent` (NSS: LDAP,
//! sssd); a number is taken as a uid or gid as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::config::ServiceConfig;
use crate::hooks;
use crate::service::{Service, ServiceError};

/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_DB_BYTES: u64 = 16 * 1024 * 1024;
/// How long a `getent` lookup may take (NSS may ask a directory server).
const GETENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the service's user could not be determined. The transaction fails
/// before anything is changed: running the app's hooks as root by mistake
/// is worse than not running them.
#[derive(Debug, Error)]
pub enum AppUserError {
    #[error("cannot tell which user {unit} runs as: {source}; set [service] user (and group) in the configuration")]
    Unit {
        unit: String,
        source: Box<ServiceError>,
    },
    #[error("the service's user {name:?} ({from}) does not exist on this host; create it, or fix [service] user")]
    NoSuchUser { name: String, from: &'static str },
    #[error("the service's group {name:?} ({from}) does not exist on this host; create it, or fix [service] group")]
    NoSuchGroup { name: String, from: &'static str },
}

/// A user and group the app's hooks run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUser {
    /// The name, for messages (the number when it has none).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The user's home directory (`HOME` of its hooks); `/` when unknown.
    pub home: PathBuf,
}

impl AppUser {
    /// root, as a service without a user of its own runs.
    pub fn root() -> AppUser {
        AppUser {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: PathBuf::from("/root"),
        }
    }

    /// Whether this is root (hooks then keep root's privileges).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The service's user as `[service]` and, under systemd, the unit say
    /// (see the module docs).
    pub fn of_service(cfg: &ServiceConfig, service: &Service) -> Result<AppUser, AppUserError> {
        let nonempty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let (mut user, mut group) = (nonempty(&cfg.user), nonempty(&cfg.group));
        let mut from = ("[service] user", "[service] group");
        if user.is_none() && group.is_none() {
            if let Service::Systemd { unit } = service {
                let (u, g) = service.run_as().map_err(|source| AppUserError::Unit {
                    unit: unit.clone(),
                    source: Box::new(source),
                })?;
                (user, group) = (u, g);
                from = ("User= of the unit", "Group= of the unit");
            }
        }
        let mut found = match user {
            None => AppUser::root(),
            Some(name) => {
                lookup_user(&name).ok_or(AppUserError::NoSuchUser { name, from: from.0 })?
            }
        };
        if let Some(name) = group {
            found.gid =
                lookup_group(&name).ok_or(AppUserError::NoSuchGroup { name, from: from.1 })?;
        }
        Ok(found)
    }
}

/// A passwd entry by name or number: `/etc/passwd`, then `getent passwd`.
/// A number that names no entry is still a uid (with its own number as
/// group and `/` as home), as systemd takes `User=1234`.
fn lookup_user(name: &str) -> Option<AppUser> {
    if name == "root" || name == "0" {
        return Some(AppUser::root());
    }
    let parse = |text: &str| {
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || !(f[0] == name || f[2] == name) {
                return None;
            }
            Some(AppUser {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
            })
        })
    };
    if let Some(user) = read_db("/etc/passwd").and_then(|t| parse(&t)) {
        return Some(user);
    }
    if let Some(user) = getent("passwd", name).and_then(|t| parse(&t)) {
        return Some(user);
    }
    let uid: u32 = name.parse().ok()?;
    Some(AppUser {
        name: name.to_string(),
        uid,
        gid: uid,
        home: PathBuf::from("/"),
    })
}

/// A group's id by name or number: `/etc/group`, then `getent group`.
fn lookup_group(name: &str) -> Option<u32> {
    let parse = |text: &str| {
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || !(f[0] == name || f[2] == name) {
                return None;
            }
            f[2].parse().ok()
        })
    };
    read_db("/etc/group")
        .and_then(|t| parse(&t))
        .or_else(|| getent("group", name).and_then(|t| parse(&t)))
        .or_else(|| name.parse().ok())
}

fn read_db(path: &str) -> Option<String> {
    slipway_fs::read_text_capped(Path::new(path), MAX_DB_BYTES).ok()
}

/// `getent DB KEY`, when `getent` exists and finds it.
fn getent(db: &str, key: &str) -> Option<String> {
    let argv = ["getent", db, key].map(String::from);
    hooks::run_command(&argv, Path::new("/"), &[], GETENT_TIMEOUT)
        .ok()
        .map(|out| out.stdout_tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers_resolve_without_a_database_entry() {
        assert_eq!(lookup_user("root"), Some(AppUser::root()));
        let u = lookup_user("4242424").expect("a bare uid");
        assert_eq!((u.uid, u.gid), (4242424, 4242424));
        assert_eq!(lookup_group("4242424"), Some(4242424));
        assert_eq!(lookup_user("no-such-user-slipway"), None);
        assert_eq!(lookup_group("no-such-group-slipway"), None);
    }

    #[test]
    fn a_service_without_a_user_and_no_systemd_runs_hooks_as_root() {
        let cfg = ServiceConfig {
            manager: crate::config::ManagerKind::None,
            ..ServiceConfig::default()
        };
        let user = AppUser::of_service(&cfg, &Service::from_config(&cfg)).expect("root");
        assert!(user.is_root());
        let cfg = ServiceConfig {
            user: Some("no-such-user-slipway".into()),
            ..cfg
        };
        let err = AppUser::of_service(&cfg, &Service::from_config(&cfg)).expect_err("missing");
        assert!(err.to_string().contains("[service] user"), "{err}");
    }
}
