//! DescribeUserScramCredentials and AlterUserScramCredentials: SCRAM users live in the
//! metadata state as salted, iterated keys (never a password), so `kafka-configs
//! --alter --add-config SCRAM-SHA-256=[...]` and the AdminClient manage them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use super::authz::Authz;
use super::str_bytes;
use crate::broker::Broker;
use crate::metadata::state::{AccessError, Command, Response, ScramChange};
use crate::security::acl::Operation;
use crate::security::scram::{Mechanism, ScramCredential, MAX_ITERATIONS, MIN_ITERATIONS};

/// A user name Kafka accepts: not empty, and no wider than the state should hold.
const MAX_USER_NAME: usize = 1024;

type Refusal = (ResponseError, String);

pub fn describe(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DescribeUserScramCredentialsRequest,
    _version: i16,
) -> DescribeUserScramCredentialsResponse {
    let response = DescribeUserScramCredentialsResponse::default();
    if !authz.cluster(Operation::Describe) {
        return response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes(
                "Authorization failed: DESCRIBE on the cluster",
            )));
    }
    let known: BTreeMap<String, Vec<(Mechanism, u32)>> = broker.read(|s| {
        s.access()
            .scram_users()
            .map(|(user, creds)| (user.to_owned(), creds))
            .collect()
    });
    let info = |creds: &[(Mechanism, u32)]| {
        creds
            .iter()
            .map(|(m, i)| {
                CredentialInfo::default()
                    .with_mechanism(*m as i8)
                    .with_iterations(i32::try_from(*i).unwrap_or(i32::MAX))
            })
            .collect()
    };
    let results = match req.users.filter(|u| !u.is_empty()) {
        None => known
            .iter()
            .map(|(user, creds)| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(str_bytes(user))
                    .with_credential_infos(info(creds))
            })
            .collect(),
        Some(users) => {
            let mut seen = BTreeMap::<&str, usize>::new();
            for u in &users {
                *seen.entry(u.name.as_str()).or_default() += 1;
            }
            users
                .iter()
                .map(|u| {
                    let name = u.name.as_str();
                    let result = DescribeUserScramCredentialsResult::default().with_user(u.name.clone());
                    let (code, message) = if seen.get(name).copied().unwrap_or(0) > 1 {
                        (ResponseError::DuplicateResource, "Cannot describe SCRAM credentials for the same user twice in a single request")
                    } else if let Some(creds) = known.get(name) {
                        return result.with_credential_infos(info(creds));
                    } else {
                        (ResponseError::ResourceNotFound, "Attempt to describe a user credential that does not exist")
                    };
                    result
                        .with_error_code(code.code())
                        .with_error_message(Some(str_bytes(&format!("{message}: {name}"))))
                })
                .collect()
        }
    };
    response.with_results(results)
}

/// Every change of one user applies, or none does (Kafka's rule).
pub async fn alter(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: AlterUserScramCredentialsRequest,
    _version: i16,
) -> AlterUserScramCredentialsResponse {
    // User → its changes, in request order, or why they are all refused.
    let mut users: BTreeMap<String, Result<Vec<ScramChange>, Refusal>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut seen: BTreeSet<(String, i8)> = BTreeSet::new();
    let allowed = authz.cluster(Operation::Alter);
    let changes = req
        .deletions
        .iter()
        .map(|d| (d.name.as_str(), d.mechanism, None))
        .chain(req.upsertions.iter().map(|u| {
            (
                u.name.as_str(),
                u.mechanism,
                Some((u.iterations, &u.salt, &u.salted_password)),
            )
        }));
    for (user, code, upsert) in changes {
        if !users.contains_key(user) {
            order.push(user.to_owned());
        }
        let entry = users
            .entry(user.to_owned())
            .or_insert_with(|| Ok(Vec::new()));
        let checked = check_change(user, code, upsert, allowed, &mut seen);
        match (entry.as_mut(), checked) {
            (Ok(list), Ok(change)) => list.push(change),
            (Ok(_), Err(refusal)) => *entry = Err(refusal),
            (Err(_), _) => {}
        }
    }
    let accepted: Vec<ScramChange> = users
        .values()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    // One result per change, in `accepted` order: map them back to users.
    let mut outcomes: BTreeMap<String, Refusal> = BTreeMap::new();
    if !accepted.is_empty() {
        let proposal = broker
            .propose(Command::AlterScram {
                changes: accepted.clone(),
            })
            .await;
        match proposal {
            Ok(Response::Scram(results)) => {
                for (change, result) in accepted.iter().zip(results) {
                    if let Err(e) = result {
                        let (code, message) = match e {
                            AccessError::NoSuchCredential => (
                                ResponseError::ResourceNotFound,
                                "Attempt to delete a user credential that does not exist"
                                    .to_owned(),
                            ),
                            other => (ResponseError::UnacceptableCredential, other.to_string()),
                        };
                        outcomes
                            .entry(change_user(change).to_owned())
                            .or_insert((code, message));
                    }
                }
            }
            Ok(other) => {
                for change in &accepted {
                    outcomes.insert(
                        change_user(change).to_owned(),
                        (ResponseError::UnknownServerError, format!("{other:?}")),
                    );
                }
            }
            Err(e) => {
                for change in &accepted {
                    outcomes.insert(
                        change_user(change).to_owned(),
                        (ResponseError::RequestTimedOut, e.to_string()),
                    );
                }
            }
        }
    }
    let results = order
        .into_iter()
        .map(|user| {
            let result = AlterUserScramCredentialsResult::default().with_user(str_bytes(&user));
            let refusal = match users.remove(&user) {
                Some(Err(refusal)) => Some(refusal),
                _ => outcomes.remove(&user),
            };
            match refusal {
                Some((code, message)) => result
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message))),
                None => result,
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

fn change_user(change: &ScramChange) -> &str {
    match change {
        ScramChange::Upsert { user, .. } | ScramChange::Delete { user, .. } => user,
    }
}

/// One deletion (`upsert` None) or upsertion, checked as Kafka checks it.
fn check_change(
    user: &str,
    code: i8,
    upsert: Option<(i32, &bytes::Bytes, &bytes::Bytes)>,
    allowed: bool,
    seen: &mut BTreeSet<(String, i8)>,
) -> Result<ScramChange, Refusal> {
    if !allowed {
        return Err((
            ResponseError::ClusterAuthorizationFailed,
            "Authorization failed: ALTER on the cluster".into(),
        ));
    }
    if user.is_empty() || user.len() > MAX_USER_NAME {
        return Err((
            ResponseError::UnacceptableCredential,
            "Username must not be empty or longer than 1024 bytes".into(),
        ));
    }
    let Some(mechanism) = Mechanism::from_code(code) else {
        return Err((
            ResponseError::UnsupportedSaslMechanism,
            format!("Unknown SCRAM mechanism {code}"),
        ));
    };
    if !seen.insert((user.to_owned(), code)) {
        return Err((
            ResponseError::DuplicateResource,
            "A user credential cannot be altered twice in the same request".into(),
        ));
    }
    let Some((iterations, salt, salted_password)) = upsert else {
        return Ok(ScramChange::Delete {
            user: user.to_owned(),
            mechanism,
        });
    };
    let iterations = u32::try_from(iterations).unwrap_or(0);
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err((
            ResponseError::UnacceptableCredential,
            format!("Iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"),
        ));
    }
    if salt.is_empty()
        || salted_password.is_empty()
        || salt.len() > 1024
        || salted_password.len() > 1024
    {
        return Err((
            ResponseError::UnacceptableCredential,
            "Salt and salted password must not be empty".into(),
        ));
    }
    Ok(ScramChange::Upsert {
        user: user.to_owned(),
        mechanism,
        credential: ScramCredential::from_salted_password(
            mechanism,
            salted_password,
            salt,
            iterations,
        ),
        only_if_missing: false,
    })
}
