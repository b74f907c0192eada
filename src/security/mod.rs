//! Authentication and authorization: SASL mechanisms (PLAIN, SCRAM) and Kafka ACLs.
//! Everything here is pure: the connection loop (`server`) feeds it bytes and the
//! metadata state's credentials and ACLs, and acts on what it returns.

pub mod acl;
pub mod sasl;
pub mod scram;
