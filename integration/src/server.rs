//! The one loopback HTTP/1.1 server scaffold the harness's test servers share (demo
//! upstream, control plane): its own tokio runtime on a thread, bound to 127.0.0.1, stopped
//! and joined on drop.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

pub type Resp = Response<Full<Bytes>>;

/// A listening socket and the runtime that will serve it; the port is known before the
/// server's state is built (the upstream seeds its RNG with it).
pub struct Bound {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    pub port: u16,
    name: String,
}

/// A running server; dropping it stops the accept loop and joins its thread.
pub struct Server {
    pub port: u16,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds 127.0.0.1:`port` (0 = ephemeral) with a runtime of `workers` threads.
pub fn bind(name: &str, port: u16, workers: usize) -> std::io::Result<Bound> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name(name.to_string())
        .enable_all()
        .build()?;
    let listener = {
        let _guard = rt.enter();
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        socket.listen(1024)?
    };
    let port = listener.local_addr()?.port();
    Ok(Bound {
        rt,
        listener,
        port,
        name: name.to_string(),
    })
}

impl Bound {
    /// Serves every connection with `handle(shared, request)` until the `Server` is dropped.
    pub fn serve<S, F, Fut>(self, shared: Arc<S>, handle: F) -> std::io::Result<Server>
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
    {
        let (tx, rx) = watch::channel(false);
        let Bound {
            rt,
            listener,
            port,
            name,
        } = self;
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{port}"))
            .spawn(move || {
                rt.block_on(accept_loop(listener, shared, rx, handle));
                rt.shutdown_timeout(Duration::from_millis(200));
            })?;
        Ok(Server {
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop<S, F, Fut>(
    listener: tokio::net::TcpListener,
    shared: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // e.g. too many open files: back off a little and go on.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sh = shared.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handle(sh.clone(), req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            // Request heads up to 8 MiB (hyper's default is ~400 KiB): Envoy's own header
            // limit (60 KiB in the bundle, at most 8 MiB) decides what reaches an app, and a
            // test that raises it must not be refused by the test's servers instead. The
            // buffer grows only as a request needs it.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .max_buf_size(8 << 20)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}
