//! Lock tokens.

use std::cell::RefCell;

use rand::rngs::{StdRng, SysRng};
use rand::{Rng, SeedableRng};

use crate::{Error, ErrorKind, Result};

/// Tokens drawn from one thread's generator before it is reseeded from the operating system
/// (64 KiB of output, the reseeding interval of `rand`'s own `ThreadRng`).
const TOKENS_PER_SEED: u32 = 4096;

/// A ChaCha12 generator per thread, seeded from the operating system: one `getrandom` call
/// per 4,096 tokens instead of one per token. `rand::rng()` would do the same but panics
/// when the OS generator fails; here that failure is an error the caller sees.
struct TokenRng {
    rng: StdRng,
    left: u32,
}

thread_local! {
    static TOKEN_RNG: RefCell<Option<TokenRng>> = const { RefCell::new(None) };
}

fn os_seeded() -> Result<StdRng> {
    StdRng::try_from_rng(&mut SysRng).map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!("the system random number generator failed: {e}"),
        )
    })
}

/// 64 bits from the generator lock tokens come from (a CSPRNG seeded from the operating
/// system): for seeds that outsiders must not guess, such as a hash table's.
pub fn random_u64() -> Result<u64> {
    let bytes = random_bytes::<8>()?;
    Ok(u64::from_le_bytes(bytes))
}

fn random_128() -> Result<[u8; 16]> {
    random_bytes::<16>()
}

/// `N` bytes from this thread's CSPRNG, reseeding it from the OS when due.
fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    TOKEN_RNG.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|t| t.left == 0) {
            *slot = Some(TokenRng {
                rng: os_seeded()?,
                left: TOKENS_PER_SEED,
            });
        }
        let mut bytes = [0u8; N];
        if let Some(t) = slot.as_mut() {
            t.rng.fill_bytes(&mut bytes);
            t.left -= 1;
        }
        Ok(bytes)
    })
}

/// A fresh lock token: 128 bits from a CSPRNG seeded from the operating system, as 32
/// lowercase hex characters (contract rule 10: unguessable and unique per acquisition).
pub fn new_lock_token() -> Result<String> {
    let bytes = random_128()?;
    let mut text = [0u8; 32];
    // Cannot fail: the output is exactly twice the input's length, and hex is ASCII.
    hex::encode_to_slice(bytes, &mut text)
        .ok()
        .and_then(|()| std::str::from_utf8(&text).ok())
        .map(str::to_owned)
        .ok_or_else(|| Error::new(ErrorKind::Backend, "lock token encoding failed"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    /// Draws left before this thread's generator is reseeded (`None`: not seeded yet).
    fn draws_left() -> Option<u32> {
        super::TOKEN_RNG.with(|cell| cell.borrow().as_ref().map(|t| t.left))
    }

    #[test]
    fn the_generator_is_reseeded_every_4096_draws() {
        std::thread::spawn(|| {
            assert_eq!(draws_left(), None);
            super::new_lock_token().unwrap();
            assert_eq!(draws_left(), Some(super::TOKENS_PER_SEED - 1));
            super::random_u64().unwrap();
            assert_eq!(draws_left(), Some(super::TOKENS_PER_SEED - 2));
            for _ in 2..super::TOKENS_PER_SEED {
                super::new_lock_token().unwrap();
            }
            assert_eq!(draws_left(), Some(0));
            super::new_lock_token().unwrap();
            assert_eq!(draws_left(), Some(super::TOKENS_PER_SEED - 1), "reseeded");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn random_u64s_are_distinct() {
        let drawn: HashSet<u64> = (0..64).map(|_| super::random_u64().unwrap()).collect();
        assert_eq!(drawn.len(), 64);
    }

    #[test]
    fn tokens_are_128_bit_hex_and_distinct() {
        let a = super::new_lock_token().unwrap();
        let b = super::new_lock_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_stay_distinct_across_reseeds_and_threads() {
        let draw = || {
            (0..2 * super::TOKENS_PER_SEED + 7)
                .map(|_| super::new_lock_token().unwrap())
                .collect::<Vec<_>>()
        };
        let other = std::thread::spawn(draw).join().unwrap();
        let mut seen: HashSet<String> = draw().into_iter().collect();
        let here = seen.len();
        seen.extend(other);
        assert_eq!(here, 2 * super::TOKENS_PER_SEED as usize + 7);
        assert_eq!(seen.len(), 2 * here, "a token repeated across threads");
    }
}
