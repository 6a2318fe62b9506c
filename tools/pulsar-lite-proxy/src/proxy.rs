//! One proxied connection: bytes from the client go to the broker unchanged,
//! frames from the broker go through the [`Rewriter`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::frame::{frame_len, split_frame, FrameError, Rewriter, Stats};

/// pulsar-lite is on loopback: a connect that takes longer is not going to work.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new client connection is held open while pulsar-lite is down
/// (being restarted, typically for well under a second).
///
/// Closing it at once would be wrong: by then the client's TCP connect has
/// succeeded (the proxy accepted it), so the `pulsar` crate sees the close
/// during its handshake as a *fatal* `Disconnected` and, for a consumer,
/// stops its engine for good. Against a real broker it would have seen
/// "connection refused", which it retries with backoff. Held open, the
/// connection either goes through once the broker is back, or runs into the
/// client's own connection timeout (10 s by default), which it also retries.
pub const BROKER_PATIENCE: Duration = Duration::from_secs(30);
const BROKER_RETRY_EVERY: Duration = Duration::from_millis(50);

/// What a client may send before the broker answers (its CONNECT command);
/// buffered while waiting for the broker, and bounded because nothing else
/// should come.
const EARLY_BYTES_LIMIT: usize = 64 * 1024;

const READ_CHUNK: usize = 64 * 1024;

/// How a proxied connection ended, for its log line.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    BrokerClosed,
    /// The client closed while its connection was held for a down broker.
    ClientGaveUp,
    BrokerUnreachable(io::Error),
    ClientError(io::Error),
    BrokerError(io::Error),
    Garbage(FrameError),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientClosed => f.write_str("client closed"),
            Self::BrokerClosed => f.write_str("broker closed"),
            Self::ClientGaveUp => f.write_str("client gave up waiting for the broker to come back"),
            Self::BrokerUnreachable(e) => write!(f, "broker unreachable: {e}"),
            Self::ClientError(e) => write!(f, "client connection error: {e}"),
            Self::BrokerError(e) => write!(f, "broker connection error: {e}"),
            Self::Garbage(e) => write!(f, "closed on unframeable data from the broker: {e}"),
        }
    }
}

/// Proxies `client` to the broker at `upstream` until either side closes.
/// Closing one side closes the other: a client must notice a broker restart
/// at once, and Pulsar has no use for half-closed connections.
pub async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    rewriter: &Rewriter,
) -> (End, Stats) {
    let mut stats = Stats::default();
    let mut early = BytesMut::new();
    let broker = match connect_broker(&mut client, upstream, &mut early).await {
        Ok(broker) => broker,
        Err(end) => return (end, stats),
    };
    // Pulsar's small request/response frames (lookups, flow permits, acks)
    // should not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);

    let (mut client_read, client_write) = client.into_split();
    let (broker_read, mut broker_write) = broker.into_split();
    if !early.is_empty() {
        if let Err(e) = broker_write.write_all(&early).await {
            return (End::BrokerError(e), stats);
        }
    }

    let end = tokio::select! {
        sent = tokio::io::copy(&mut client_read, &mut broker_write) => match sent {
            Ok(_) => End::ClientClosed,
            // copy doesn't say which side failed; a reset client is likelier
            // than a failing write to a live loopback broker.
            Err(e) => End::ClientError(e),
        },
        received = pump_from_broker(broker_read, client_write, rewriter, &mut stats) => match received {
            Ok(()) => End::BrokerClosed,
            Err(PumpError::Read(e)) => End::BrokerError(e),
            Err(PumpError::Write(e)) => End::ClientError(e),
            Err(PumpError::Frame(e)) => End::Garbage(e),
        },
    };
    (end, stats)
}

/// Connects to the broker, retrying for up to [`BROKER_PATIENCE`] while it
/// is down. Meanwhile whatever the client sends is kept in `early`, which
/// also tells when it gives up.
async fn connect_broker(
    client: &mut TcpStream,
    upstream: SocketAddr,
    early: &mut BytesMut,
) -> Result<TcpStream, End> {
    let started = Instant::now();
    loop {
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
        {
            Ok(Ok(broker)) => return Ok(broker),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        if started.elapsed() >= BROKER_PATIENCE {
            return Err(End::BrokerUnreachable(error));
        }
        let retry_at = Instant::now() + BROKER_RETRY_EVERY;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(retry_at) => break,
                read = client.read_buf(early), if early.len() < EARLY_BYTES_LIMIT => match read {
                    Ok(0) => return Err(End::ClientGaveUp),
                    Ok(_) => {}
                    Err(e) => return Err(End::ClientError(e)),
                },
            }
        }
    }
}

#[derive(Debug)]
pub enum PumpError {
    Read(io::Error),
    Write(io::Error),
    Frame(FrameError),
}

/// Copies broker frames to the client, rewriting them, until the broker
/// closes. Returns an error if the stream is not a sequence of whole frames.
pub async fn pump_from_broker<R, W>(
    mut from: R,
    mut to: W,
    rewriter: &Rewriter,
    stats: &mut Stats,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Room for the rest of a large frame in one go, so a 5 MiB message
        // isn't read (and the buffer regrown) 64 KiB at a time.
        let wanted = frame_len(&input).map_err(PumpError::Frame)?.unwrap_or(0);
        input.reserve(wanted.saturating_sub(input.len()).max(READ_CHUNK));

        let read = from.read_buf(&mut input).await.map_err(PumpError::Read)?;
        if read == 0 {
            return if input.is_empty() {
                Ok(())
            } else {
                Err(PumpError::Frame(FrameError::Truncated(input.len())))
            };
        }
        // Everything complete in this read goes out in one write.
        while let Some(frame) = split_frame(&mut input).map_err(PumpError::Frame)? {
            rewriter
                .rewrite(&frame, &mut output, stats)
                .map_err(PumpError::Frame)?;
        }
        if !output.is_empty() {
            to.write_all(&output).await.map_err(PumpError::Write)?;
            output.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::frame_without_checksum;
    use pulsar::message::Codec;
    use tokio_util::codec::Decoder;

    /// Feeds `stream` through the pump over a pipe that carries at most
    /// `chunk` bytes per read, so frames arrive split at every offset.
    async fn pump_in_chunks(
        stream: Vec<u8>,
        chunk: usize,
    ) -> (Result<(), PumpError>, Vec<u8>, Stats) {
        let (mut broker, proxy_in) = tokio::io::duplex(chunk);
        let writer = tokio::spawn(async move {
            for piece in stream.chunks(chunk) {
                // The pump stops reading on garbage; the rest has nowhere to go.
                if broker.write_all(piece).await.is_err() {
                    break;
                }
            }
        });
        let mut out = Vec::new();
        let mut stats = Stats::default();
        let rewriter = Rewriter::new("pulsar://127.0.0.1:1");
        let result = pump_from_broker(proxy_in, &mut out, &rewriter, &mut stats).await;
        writer.await.expect("writer");
        (result, out, stats)
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_all_rewritten() {
        let bodies: Vec<Vec<u8>> = (0..50)
            .map(|i| vec![b'a' + (i % 26) as u8; i * 37])
            .collect();
        let stream: Vec<u8> = bodies
            .iter()
            .flat_map(|b| frame_without_checksum(b))
            .collect();

        for chunk in [1, 3, 7, 64, 100_000] {
            let (result, out, stats) = pump_in_chunks(stream.clone(), chunk).await;
            result.expect("pump");
            assert_eq!(stats.frames, 50, "chunk {chunk}");
            assert_eq!(stats.checksums_added, 50, "chunk {chunk}");

            let mut buf = BytesMut::from(&out[..]);
            for body in &bodies {
                let message = Codec.decode(&mut buf).expect("decodes").expect("complete");
                assert_eq!(
                    &message.payload.expect("payload").data,
                    body,
                    "chunk {chunk}"
                );
            }
            assert!(buf.is_empty());
        }
    }

    #[tokio::test]
    async fn stream_ending_mid_frame_is_an_error() {
        let mut stream = frame_without_checksum(b"complete");
        let partial = frame_without_checksum(b"cut short");
        stream.extend_from_slice(&partial[..partial.len() - 3]);

        let (result, out, stats) = pump_in_chunks(stream, 16).await;
        assert!(
            matches!(result, Err(PumpError::Frame(FrameError::Truncated(_)))),
            "{result:?}"
        );
        // The complete frame before it was still delivered.
        assert_eq!(stats.frames, 1);
        assert!(Codec
            .decode(&mut BytesMut::from(&out[..]))
            .expect("decodes")
            .is_some());
    }

    /// A port nothing listens on (for now).
    async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    }

    /// The proxy side of a fresh loopback connection, and the client side.
    async fn connection_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        (accepted, client)
    }

    #[tokio::test]
    async fn a_client_is_held_until_the_broker_is_back() {
        let upstream = closed_port().await;
        let (accepted, mut client) = connection_pair().await;
        let proxy = tokio::spawn(async move {
            serve(accepted, upstream, &Rewriter::new("pulsar://127.0.0.1:1")).await
        });

        // Sent while the broker is down: must reach it once it is up.
        client.write_all(b"CONNECT").await.expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let broker = tokio::net::TcpListener::bind(upstream)
            .await
            .expect("rebind");
        let (mut broker_side, _) = broker.accept().await.expect("proxy reconnects");
        let mut received = [0u8; 7];
        broker_side.read_exact(&mut received).await.expect("read");
        assert_eq!(&received, b"CONNECT");

        drop(client);
        let (end, _) = proxy.await.expect("proxy task");
        assert!(matches!(end, End::ClientClosed), "{end}");
    }

    #[tokio::test]
    async fn a_client_may_give_up_waiting() {
        let upstream = closed_port().await;
        let (accepted, client) = connection_pair().await;
        let proxy = tokio::spawn(async move {
            serve(accepted, upstream, &Rewriter::new("pulsar://127.0.0.1:1")).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(client);
        let (end, _) = tokio::time::timeout(Duration::from_secs(5), proxy)
            .await
            .expect("ends promptly")
            .expect("proxy task");
        assert!(matches!(end, End::ClientGaveUp), "{end}");
    }

    #[tokio::test]
    async fn garbage_stops_the_pump() {
        let (result, out, _) =
            pump_in_chunks(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(), 8).await;
        assert!(
            matches!(result, Err(PumpError::Frame(FrameError::TooLarge(_)))),
            "{result:?}"
        );
        assert!(out.is_empty());
    }
}
