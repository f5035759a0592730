//! Lock tokens.

use crate::{Error, ErrorKind, Result};

/// A fresh lock token: 128 bits from the operating system's CSPRNG, as 32 lowercase hex
/// characters (contract rule 10: unguessable and unique per acquisition).
pub fn new_lock_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!("the system random number generator failed: {e}"),
        )
    })?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_128_bit_hex_and_distinct() {
        let a = super::new_lock_token().unwrap();
        let b = super::new_lock_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
