//! DNS over TCP, through hickory-server: its connection handling (length
//! framing, pipelining, idle timeout) with our answers.

use std::io;
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts};
use hickory_proto::rr::Record;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::SharedDnsData;
use super::answer;
use super::count::count;

/// A TCP connection that sends no query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;

/// Serves `listeners` until `shutdown`, then returns once hickory's tasks
/// have ended.
pub(super) async fn serve(
    listeners: Vec<TcpListener>,
    data: SharedDnsData,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut server = Server::new(Handler { data });
    for tcp in listeners {
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    let stop = server.shutdown_token().clone();
    let forward = async move {
        shutdown.cancelled().await;
        stop.cancel();
        std::future::pending::<()>().await
    };
    tokio::select! {
        result = server.block_until_done() => {
            result.map_err(|e| io::Error::other(format!("DNS server stopped: {e}")))
        }
        () = forward => unreachable!("pending never completes"),
    }
}

struct Handler {
    data: SharedDnsData,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = {
            let data = self.data.load();
            let reply = answer::respond(&data, request);
            count(&data, request, &reply);
            reply
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &reply.edns {
            builder.edns(edns);
        }
        let response = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty::<&Record>(),
            std::iter::empty::<&Record>(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(src = %request.src(), %error, "cannot send a DNS response");
                ResponseInfo::from(Header {
                    metadata: reply.metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
