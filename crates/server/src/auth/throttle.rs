//! Slows down guessing of passwords and tokens: failures per key (a client address and
//! account pair, a client address) lead to lockouts that double and end by themselves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_CACHED: usize = 100_000;

/// Slows down guessing: after `free` failures within `window`, a key (a username or a
/// client address) is refused for a lockout that doubles with each further failure, up to
/// `max_lockout`. A success clears the key, and every lockout ends by itself, so the real
/// owner is never locked out for good.
pub struct Throttle {
    entries: Mutex<HashMap<String, Failures>>,
    free: u32,
    window: Duration,
    base_lockout: Duration,
    max_lockout: Duration,
}

struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

impl Throttle {
    pub fn new(free: u32, window: Duration, base_lockout: Duration, max_lockout: Duration) -> Self {
        Throttle {
            entries: Mutex::new(HashMap::new()),
            free: free.max(1),
            window,
            base_lockout,
            max_lockout,
        }
    }

    /// Seconds to wait if the key is locked out.
    pub fn locked(&self, key: &str) -> Option<u64> {
        let entries = self.entries.lock().expect("throttle lock");
        let until = entries.get(key)?.locked_until?;
        let now = Instant::now();
        // Rounded up: a client that waits what it is told is let in.
        (until > now).then(|| (until - now).as_millis().div_ceil(1000).max(1) as u64)
    }

    /// Checks and counts in one step: refused (with the wait) while locked out, else
    /// counted as a failure until [`Throttle::success`] or [`Throttle::forgive`] says
    /// otherwise. Simultaneous attempts thus see each other before any of them is checked.
    pub fn attempt(&self, key: &str) -> Result<(), u64> {
        if let Some(wait) = self.locked(key) {
            return Err(wait);
        }
        self.failure(key);
        Ok(())
    }

    pub fn failure(&self, key: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("throttle lock");
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, f| f.locked_until.is_some_and(|u| u > now) || now - f.first < self.window);
        }
        let f = entries.entry(key.to_string()).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        if now - f.first > self.window && f.locked_until.is_none_or(|u| u <= now) {
            *f = Failures {
                count: 0,
                first: now,
                locked_until: None,
            };
        }
        f.count += 1;
        if f.count >= self.free {
            let doublings = (f.count - self.free).min(16);
            let lockout = self.base_lockout.saturating_mul(1 << doublings).min(self.max_lockout);
            f.locked_until = Some(now + lockout);
        }
    }

    /// Takes back one failure counted ahead of time (before a check whose outcome was
    /// not yet known) that turned out a success.
    pub fn forgive(&self, key: &str) {
        let mut entries = self.entries.lock().expect("throttle lock");
        if let Some(f) = entries.get_mut(key) {
            f.count = f.count.saturating_sub(1);
            if f.count < self.free {
                f.locked_until = None;
            }
        }
    }

    pub fn success(&self, key: &str) {
        self.entries.lock().expect("throttle lock").remove(key);
    }
}

/// The key of one client address guessing at one account. Keying on the pair, not on
/// the account, is what keeps a guesser elsewhere from locking the owner out.
pub fn pair_key(username: &str, addr: Option<IpAddr>) -> String {
    match addr {
        Some(ip) => format!("{ip}|{username}"),
        None => format!("-|{username}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_locks_then_recovers() {
        let t = Throttle::new(
            3,
            Duration::from_secs(60),
            Duration::from_millis(50),
            Duration::from_millis(200),
        );
        t.failure("k");
        t.failure("k");
        assert!(t.locked("k").is_none());
        t.failure("k");
        assert!(t.locked("k").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(t.locked("k").is_none(), "a lockout ends by itself");
        t.success("k");
        assert!(t.locked("k").is_none());
    }
}
