//! Response bodies produced a chunk at a time by a task that waits while the client reads:
//! a listing of any size costs a chunk or two of memory, and a client that stops reading
//! stalls only its own task until the connection's inactivity timeout ends it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

/// What one chunk of a streamed listing aims at. Each streaming response holds up to
/// three (the one being read, the one waiting, the one hyper is writing), so this is
/// what a long download costs: 128 KiB keeps 32 downloads under 12 MiB, and a chunk is
/// still about a hundred records, one read.
pub const CHUNK_BYTES: usize = 128 << 10;

/// A chunk could not be produced; the response is cut off, which the client sees as a
/// failed download and retries (its records were never acknowledged as complete).
#[derive(Debug, thiserror::Error)]
#[error("the listing could not be completed: {0}")]
pub struct Cut(pub String);

struct ChannelBody(mpsc::Receiver<Result<Bytes, Cut>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Cut>>> {
        self.0.poll_recv(cx).map(|c| c.map(|r| r.map(http_body::Frame::data)))
    }
}

/// A body whose chunks `produce` sends; it runs as its own task and each send waits
/// until the previous chunk has been taken.
pub fn body<F, Fut>(produce: F) -> Body
where
    F: FnOnce(Sender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(produce(Sender(tx)));
    Body::new(ChannelBody(rx))
}

pub struct Sender(mpsc::Sender<Result<Bytes, Cut>>);

impl Sender {
    /// False once the client has gone: stop producing.
    pub async fn send(&self, chunk: Vec<u8>) -> bool {
        self.0.send(Ok(Bytes::from(chunk))).await.is_ok()
    }

    pub async fn fail(&self, why: Cut) {
        tracing::warn!(error = %why, "streamed response cut off");
        let _ = self.0.send(Err(why)).await;
    }
}
