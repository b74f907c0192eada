//! A request body through the bounds walker, then, if the walker accepts it, through
//! kafka-protocol's decoder, as the broker does. The first two bytes pick the API key and
//! the version among those the crate knows. A crash or an abort is a finding: the walker
//! accepted a body whose decode allocates more than the frame justifies, or the crate
//! panics on one.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind};
use libfuzzer_sys::fuzz_target;
use strata::protocol::bounds;

fuzz_target!(|data: &[u8]| {
    let [k, v, body @ ..] = data else {
        return;
    };
    let keys: Vec<ApiKey> = ApiKey::iter().collect();
    let key = keys[usize::from(*k) % keys.len()];
    let range = key.valid_versions();
    let span = (range.max - range.min + 1) as u8;
    let version = range.min + i16::from(*v % span);
    if let Ok(walked) = bounds::walk(key, version, body) {
        assert!(walked.heap <= bounds::limit(body.len()));
        assert!(walked.consumed <= body.len());
        let mut buf = Bytes::copy_from_slice(body);
        let _ = RequestKind::decode(key, &mut buf, version);
    }
});
