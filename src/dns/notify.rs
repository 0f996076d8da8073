//! NOTIFY (RFC 1996): tells a zone's `notify` secondaries that its serial
//! changed, at start-up and after a reload, over UDP from an ephemeral
//! port, signed with the zone's transfer key when it has one. Each target
//! gets its own task, which retries with a doubling wait until it has an
//! answer. The answer only stops the retries: its TSIG is not checked,
//! since a forged answer could do no more than a lost NOTIFY does (the
//! secondary still polls at the SOA's refresh).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DnsData;
use super::tsig::{self, Key};
use crate::metrics::DNS_NOTIFY;

/// The first wait for an answer, doubled at each retry.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// Sends per target: 1 + 2 + 4 + 8 + 16 = 31 s of waiting in all.
const ATTEMPTS: u32 = 5;

/// Spawns a NOTIFY to every `notify` target of each zone in `changed`.
pub(super) fn send(
    data: &DnsData,
    changed: Vec<LowerName>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    for origin in changed {
        let (Some(policy), Some(version)) = (
            data.compiled.transfer.get(&origin),
            data.history.current(&origin),
        ) else {
            continue;
        };
        for &target in &policy.notify {
            tasks.spawn(notify(
                policy.origin.clone(),
                version.soa.clone(),
                policy.key.clone(),
                target,
                shutdown.clone(),
            ));
        }
    }
}

/// What became of one target's NOTIFY.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answered,
    Error(ResponseCode),
    Timeout,
}

async fn notify(
    zone: Name,
    soa: Record,
    key: Option<Arc<Key>>,
    target: SocketAddr,
    shutdown: CancellationToken,
) {
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => return,
        outcome = exchange(&zone, &soa, key.as_deref(), target) => outcome,
    };
    let result = match &outcome {
        Ok(Outcome::Answered) => "answered",
        Ok(Outcome::Error(_)) => "error",
        Ok(Outcome::Timeout) | Err(_) => "timeout",
    };
    metrics::counter!(DNS_NOTIFY, "zone" => zone.to_ascii(), "result" => result).increment(1);
    match outcome {
        Ok(Outcome::Answered) => {
            tracing::info!(%zone, %target, serial = serial(&soa), "NOTIFY answered")
        }
        Ok(Outcome::Error(rcode)) => {
            tracing::warn!(%zone, %target, %rcode, "NOTIFY answered with an error")
        }
        Ok(Outcome::Timeout) => {
            tracing::warn!(%zone, %target, attempts = ATTEMPTS, "NOTIFY not answered")
        }
        Err(error) => tracing::warn!(%zone, %target, %error, "cannot send NOTIFY"),
    }
}

fn serial(soa: &Record) -> u32 {
    match &soa.data {
        hickory_proto::rr::RData::SOA(s) => s.serial,
        _ => 0,
    }
}

/// The NOTIFY message for `zone` with its current `soa` (RFC 1996 §3.7),
/// signed with `key`.
fn message(id: u16, zone: &Name, soa: &Record, key: Option<&Key>) -> std::io::Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.add_query(Query::query(zone.clone(), RecordType::SOA));
    m.add_answer(soa.clone());
    let mut bytes = m.to_vec().map_err(std::io::Error::other)?;
    if let Some(key) = key {
        tsig::sign(
            &mut bytes,
            key,
            tsig::Chain::Request,
            tsig::now(),
            None,
            Vec::new(),
        );
    }
    Ok(bytes)
}

async fn exchange(
    zone: &Name,
    soa: &Record,
    key: Option<&Key>,
    target: SocketAddr,
) -> std::io::Result<Outcome> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    let id = fastrand::u16(..);
    let mut wait = FIRST_WAIT;
    let mut buf = vec![0; 4096];
    for _ in 0..ATTEMPTS {
        // A new signature each time: the time signed must stay fresh.
        socket
            .send_to(&message(id, zone, soa, key)?, target)
            .await?;
        let answer = tokio::time::timeout(wait, async {
            loop {
                let (len, from) = socket.recv_from(&mut buf).await?;
                if from != target {
                    continue;
                }
                let Ok(reply) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                if reply.metadata.id == id
                    && reply.metadata.message_type == MessageType::Response
                    && reply.metadata.op_code == OpCode::Notify
                {
                    return Ok::<_, std::io::Error>(reply.metadata.response_code);
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(ResponseCode::NoError)) => return Ok(Outcome::Answered),
            Ok(Ok(rcode)) => return Ok(Outcome::Error(rcode)),
            Ok(Err(error)) => return Err(error),
            Err(_) => wait *= 2,
        }
    }
    Ok(Outcome::Timeout)
}
