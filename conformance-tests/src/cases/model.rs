use crate::{CaseResult, Failure, Harness};

/// Random operation sequences against a reference model of the contract.
pub async fn model_based_operations(_h: &Harness) -> CaseResult {
    Err(Failure::new("not written yet"))
}
