//! A TCP forwarder in front of a server, which a test can cut and restore:
//! cut, every connection through it is closed and its port refuses new
//! ones, as when the server's machine goes away; turned away, its port
//! takes each connection and closes it at once, counting them, as a load
//! balancer with no server behind it does; restored, the same port
//! forwards again, as when the server comes back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

pub struct Cut {
    pub port: u16,
    target: String,
    connections: JoinSet<()>,
    turned_away: Arc<AtomicUsize>,
}

impl Cut {
    /// A forwarder to `target` (`host:port`) on a free loopback port.
    pub async fn to(target: String) -> Self {
        let mut cut = Self {
            port: 0,
            target,
            connections: JoinSet::new(),
            turned_away: Arc::default(),
        };
        cut.restore().await;
        cut
    }

    /// `url` with its host and port replaced by this forwarder's.
    pub fn in_front_of(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("a URL");
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.set_port(Some(self.port)).expect("a port");
        url.to_string()
    }

    pub fn cut(&mut self) {
        self.connections.abort_all();
    }

    /// Listens again, on the same port once one was taken, and forwards.
    pub async fn restore(&mut self) {
        self.listen(true).await;
    }

    /// Closes every connection through it, then takes new ones only to
    /// close them, counting each.
    pub async fn turn_away(&mut self) {
        self.listen(false).await;
    }

    /// Connections taken and closed while turning away.
    pub fn turned_away(&self) -> usize {
        self.turned_away.load(Ordering::SeqCst)
    }

    async fn listen(&mut self, forward: bool) {
        // The old listener must be closed, not only told to close, before
        // its port can be bound again.
        self.cut();
        while self.connections.join_next().await.is_some() {}
        let socket = TcpSocket::new_v4().expect("a socket");
        // The port was ours a moment ago: its closed connections may still
        // linger in TIME_WAIT.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        socket.bind(addr).expect("bind the forwarder's port");
        let listener = socket.listen(1024).expect("listen");
        self.port = listener.local_addr().expect("bound").port();
        let target = self.target.clone();
        let turned_away = self.turned_away.clone();
        // The accept loop is one of the connections: cutting stops it too,
        // which closes the port.
        self.connections.spawn(async move {
            let mut links = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                if !forward {
                    turned_away.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }
}
