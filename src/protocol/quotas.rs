//! DescribeClientQuotas: Strata enforces no client quotas yet, so none match.

use kafka_protocol::messages::{DescribeClientQuotasRequest, DescribeClientQuotasResponse};

pub fn describe(_req: DescribeClientQuotasRequest, _version: i16) -> DescribeClientQuotasResponse {
    DescribeClientQuotasResponse::default()
        .with_error_message(None)
        .with_entries(Some(Vec::new()))
}
