//! What the cluster knows for authentication, authorization and listeners (format 5):
//! SCRAM credentials, ACLs, and each broker's advertised listeners. Pure, like the rest
//! of the state machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Command, Response};
use crate::security::acl::{AclBinding, AclFilter, Acls};
use crate::security::scram::{Mechanism, ScramCredential};

/// Caps, so that no client can grow the state without bound through these APIs.
pub const MAX_SCRAM_USERS: usize = 10_000;
pub const MAX_ACLS: usize = 100_000;
/// Listeners one broker may advertise.
pub const MAX_LISTENERS: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessState {
    /// SCRAM credentials by user, then mechanism.
    scram: BTreeMap<String, BTreeMap<Mechanism, ScramCredential>>,
    acls: Acls,
    /// Each broker's advertised listeners: name → (host, port).
    listeners: BTreeMap<u64, BTreeMap<String, (String, i32)>>,
}

/// A change to the SCRAM credentials (AlterUserScramCredentials, the bootstrap admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScramChange {
    Upsert {
        user: String,
        mechanism: Mechanism,
        credential: ScramCredential,
        /// Leave an existing credential alone (the bootstrap admin, proposed by every
        /// broker at start: the first one wins).
        only_if_missing: bool,
    },
    Delete {
        user: String,
        mechanism: Mechanism,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AccessError {
    #[error("attempt to delete a user credential that does not exist")]
    NoSuchCredential,
    #[error("too many SCRAM users (at most {MAX_SCRAM_USERS})")]
    TooManyUsers,
    #[error("too many ACLs (at most {MAX_ACLS})")]
    TooManyAcls,
    #[error("too many listeners (at most {MAX_LISTENERS})")]
    TooManyListeners,
}

impl AccessState {
    /// The security and listener commands, as routed by
    /// [`MetadataState::apply`](super::MetadataState::apply).
    pub(super) fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::AlterScram { changes } => {
                Response::Scram(changes.iter().map(|c| self.change_scram(c)).collect())
            }
            Command::CreateAcls { bindings } => Response::Access(self.create_acls(bindings)),
            Command::DeleteAcls { bindings } => Response::AclsDeleted(self.delete_acls(bindings)),
            Command::RegisterListeners { id, listeners } => {
                Response::Access(self.register_listeners(*id, listeners))
            }
            // `MetadataState::apply` routes no other command here.
            _ => Response::Empty,
        }
    }

    pub fn credential(&self, user: &str, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.scram.get(user)?.get(&mechanism)
    }

    /// Users and their mechanisms' iteration counts, for DescribeUserScramCredentials.
    pub fn scram_users(&self) -> impl Iterator<Item = (&str, Vec<(Mechanism, u32)>)> {
        self.scram.iter().map(|(user, creds)| {
            let mechanisms = creds.iter().map(|(m, c)| (*m, c.iterations)).collect();
            (user.as_str(), mechanisms)
        })
    }

    pub fn acls(&self) -> &Acls {
        &self.acls
    }

    /// The broker's advertised address on the named listener.
    pub fn listener(&self, broker: u64, name: &str) -> Option<(&str, i32)> {
        let (host, port) = self.listeners.get(&broker)?.get(name)?;
        Some((host.as_str(), *port))
    }

    /// Whether the broker registered its listeners (a build of format 5 or later).
    pub fn has_listeners(&self, broker: u64) -> bool {
        self.listeners.contains_key(&broker)
    }

    pub fn change_scram(&mut self, change: &ScramChange) -> Result<(), AccessError> {
        match change {
            ScramChange::Upsert {
                user,
                mechanism,
                credential,
                only_if_missing,
            } => {
                if !self.scram.contains_key(user) && self.scram.len() >= MAX_SCRAM_USERS {
                    return Err(AccessError::TooManyUsers);
                }
                let creds = self.scram.entry(user.clone()).or_default();
                if !(*only_if_missing && creds.contains_key(mechanism)) {
                    creds.insert(*mechanism, credential.clone());
                }
                Ok(())
            }
            ScramChange::Delete { user, mechanism } => {
                let creds = self
                    .scram
                    .get_mut(user)
                    .ok_or(AccessError::NoSuchCredential)?;
                creds
                    .remove(mechanism)
                    .ok_or(AccessError::NoSuchCredential)?;
                if creds.is_empty() {
                    self.scram.remove(user);
                }
                Ok(())
            }
        }
    }

    pub fn create_acls(&mut self, bindings: &[AclBinding]) -> Result<(), AccessError> {
        if self.acls.len() + bindings.len() > MAX_ACLS {
            return Err(AccessError::TooManyAcls);
        }
        self.acls.create(bindings);
        Ok(())
    }

    /// Removes exactly these bindings; returns those that were there.
    pub fn delete_acls(&mut self, bindings: &[AclBinding]) -> Vec<AclBinding> {
        bindings
            .iter()
            .flat_map(|b| self.acls.delete(&AclFilter::exact(b)))
            .collect()
    }

    pub fn register_listeners(
        &mut self,
        broker: u64,
        listeners: &[(String, String, i32)],
    ) -> Result<(), AccessError> {
        if listeners.len() > MAX_LISTENERS {
            return Err(AccessError::TooManyListeners);
        }
        let map = listeners
            .iter()
            .map(|(name, host, port)| (name.clone(), (host.clone(), *port)))
            .collect();
        self.listeners.insert(broker, map);
        Ok(())
    }

    /// A broker that left the cluster for good.
    /// The brokers with registered listeners.
    pub fn broker_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.listeners.keys().copied()
    }

    pub fn forget_broker(&mut self, broker: u64) {
        self.listeners.remove(&broker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::acl::{Operation, PatternType, Permission, ResourceType};

    fn cred(n: u8) -> ScramCredential {
        ScramCredential {
            salt: vec![n; 4],
            stored_key: vec![n; 32],
            server_key: vec![n; 32],
            iterations: 4096,
        }
    }

    #[test]
    fn scram_upserts_and_deletes() {
        let mut s = AccessState::default();
        let upsert = |n, only_if_missing| ScramChange::Upsert {
            user: "alice".into(),
            mechanism: Mechanism::Sha256,
            credential: cred(n),
            only_if_missing,
        };
        assert_eq!(s.change_scram(&upsert(1, true)), Ok(()));
        assert_eq!(s.change_scram(&upsert(2, true)), Ok(()));
        assert_eq!(s.credential("alice", Mechanism::Sha256), Some(&cred(1)));
        assert_eq!(s.change_scram(&upsert(3, false)), Ok(()));
        assert_eq!(s.credential("alice", Mechanism::Sha256), Some(&cred(3)));
        let delete = |mechanism| ScramChange::Delete {
            user: "alice".into(),
            mechanism,
        };
        assert_eq!(
            s.change_scram(&delete(Mechanism::Sha512)),
            Err(AccessError::NoSuchCredential)
        );
        assert_eq!(s.change_scram(&delete(Mechanism::Sha256)), Ok(()));
        assert_eq!(s.scram_users().count(), 0);
    }

    #[test]
    fn acls_are_deleted_exactly() {
        let mut s = AccessState::default();
        let binding = |name: &str, pattern_type| AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        };
        let a = binding("a", PatternType::Literal);
        let p = binding("a", PatternType::Prefixed);
        assert_eq!(s.create_acls(&[a.clone(), p.clone()]), Ok(()));
        assert_eq!(s.delete_acls(std::slice::from_ref(&a)), vec![a.clone()]);
        assert_eq!(s.delete_acls(std::slice::from_ref(&a)), vec![]);
        assert_eq!(s.acls().len(), 1);
    }

    #[test]
    fn listeners_are_per_broker() {
        let mut s = AccessState::default();
        let listeners = vec![
            ("INTERNAL".to_owned(), "10.0.0.1".to_owned(), 9092),
            (
                "EXTERNAL".to_owned(),
                "broker1.example.com".to_owned(),
                9094,
            ),
        ];
        assert_eq!(s.register_listeners(1, &listeners), Ok(()));
        assert_eq!(
            s.listener(1, "EXTERNAL"),
            Some(("broker1.example.com", 9094))
        );
        assert_eq!(s.listener(2, "EXTERNAL"), None);
        s.forget_broker(1);
        assert_eq!(s.listener(1, "INTERNAL"), None);
    }
}
