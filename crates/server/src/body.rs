//! Request bodies: read whole, within `max_request_bytes`, and within a budget of memory
//! shared by every request.
//!
//! Without the budget, the memory of large uploads grows with the clients: on SQLite
//! every write waits for the one writer, each holding its body and its parsed records
//! while it waits, so 32 first syncs hold 32 bodies where one commit group takes about
//! 1 MiB. With it, a large body is read only once there is room, and until then it waits
//! in the socket's buffers (the kernel's memory, and the client's pace, as TCP meant).
//! Small bodies (a tabs record, a few history visits) never wait for it, so a queue of
//! first syncs cannot hold up a small write.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use syncstead_proto::respcode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::state::AppState;

/// Bodies up to this size are not counted.
const SMALL: u64 = 64 << 10;

/// Memory for large bodies in flight: room for the writer's current group and the next
/// (about 1 MiB each), or for one body of the largest size allowed, whichever is more.
const BUDGET: u64 = 2 << 20;

/// Large bodies in flight, counted in KiB.
pub struct Budget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl Budget {
    pub fn new(max_request_bytes: u64) -> Self {
        let total_kib = BUDGET.max(max_request_bytes).div_ceil(1024).min(u32::MAX as u64) as u32;
        Budget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits for room for `len` bytes; `None` for a small body.
    async fn reserve(&self, len: u64) -> Option<OwnedSemaphorePermit> {
        if len <= SMALL {
            return None;
        }
        let kib = len.div_ceil(1024).min(self.total_kib as u64) as u32;
        // The semaphore is never closed.
        self.kib.clone().acquire_many_owned(kib).await.ok()
    }
}

/// A body read whole, with its share of the budget: hold it until the records it
/// carries have been written.
pub struct Read {
    pub bytes: bytes::Bytes,
    pub room: Option<OwnedSemaphorePermit>,
}

/// Reads the body, refusing anything over `max_request_bytes` with 413 before reading it
/// when the length is declared (S15-088, S15-101). A body without a declared length is
/// counted at the largest size allowed.
pub async fn read(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Read, ApiError> {
    let limit = state.settings.limits.max_request_bytes;
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(len) => Some(
            len.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ApiError::BadRequest(respcode::NONE))?,
        ),
        None => None,
    };
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge);
    }
    let room = state.runtime.bodies.reserve(declared.unwrap_or(limit)).await;
    let bytes = axum::body::to_bytes(body, limit as usize)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    Ok(Read { bytes, room })
}

#[cfg(test)]
mod tests {
    use super::*;

    // S9 (limits on everything): large bodies share the budget, small ones never wait.
    #[tokio::test]
    async fn large_bodies_wait_for_room_and_small_ones_do_not() {
        let budget = Budget::new(2_621_440);
        let a = budget.reserve(3 << 20).await;
        assert!(a.is_some());
        let second = tokio::time::timeout(std::time::Duration::from_millis(50), budget.reserve(2 << 20)).await;
        assert!(
            second.is_err(),
            "a body larger than the budget takes all of it: the next must wait"
        );
        let small = tokio::time::timeout(std::time::Duration::from_millis(50), budget.reserve(SMALL)).await;
        assert!(matches!(small, Ok(None)), "a small body never waits");
        drop(a);
        let b = tokio::time::timeout(std::time::Duration::from_millis(50), budget.reserve(2 << 20)).await;
        assert!(matches!(b, Ok(Some(_))), "room again once the first is released");
    }

    #[tokio::test]
    async fn one_body_larger_than_the_budget_still_fits_alone() {
        let budget = Budget::new(16 << 20);
        let big = tokio::time::timeout(std::time::Duration::from_millis(50), budget.reserve(16 << 20)).await;
        assert!(matches!(big, Ok(Some(_))));
    }
}
