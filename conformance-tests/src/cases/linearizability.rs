use crate::{CaseResult, Failure, Harness};

/// Records a concurrent history of lock operations and checks it is linearizable.
pub async fn locks_linearizable(_h: &Harness) -> CaseResult {
    Err(Failure::new("not written yet"))
}
