//! `dns_check`: one query over UDP, built and its answer parsed by
//! `hickory-proto`. Healthy: a response to our ID and our question, with
//! no error and at least one answer record of the type asked (keepalived's
//! DNS_CHECK checks the same).

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use rand::Rng as _;

use super::{CheckSpec, Outcome, udp::udp_socket};
use crate::config::DnsType;

fn record_type(t: DnsType) -> RecordType {
    RecordType::from(t.code())
}

fn name_of(name: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(name).map_err(|e| format!("DNS name `{name}`: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A DNS query for `name`/`qtype` with ID `id`, recursion desired.
pub fn dns_query(id: u16, name: &str, qtype: DnsType) -> Result<Vec<u8>, String> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name_of(name)?, record_type(qtype)));
    m.to_vec().map_err(|e| format!("DNS query: {e}"))
}

/// Checks a DNS answer to the query `id` for `name`/`qtype`.
pub fn dns_answer_ok(id: u16, name: &str, qtype: DnsType, r: &[u8]) -> Result<(), String> {
    let m = Message::from_vec(r).map_err(|e| format!("bad DNS answer: {e}"))?;
    if m.id() != id {
        return Err("DNS answer to another query".into());
    }
    if m.message_type() != MessageType::Response {
        return Err("not a DNS response".into());
    }
    let want = record_type(qtype);
    let asked = name_of(name)?;
    if !m
        .queries()
        .iter()
        .any(|q| q.query_type() == want && q.name() == &asked)
    {
        return Err("the answer is for another question".into());
    }
    if m.response_code() != ResponseCode::NoError {
        return Err(format!("DNS rcode {}", m.response_code()));
    }
    if !m.answers().iter().any(|a| a.record_type() == want) {
        return Err(format!("no {} record in the answer", qtype.name()));
    }
    Ok(())
}

/// One `dns_check` attempt.
pub(super) async fn dns(spec: &CheckSpec, qtype: DnsType, name: &str) -> Outcome {
    let s = match udp_socket(spec).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(e),
    };
    let id: u16 = rand::rng().random();
    let query = match dns_query(id, name, qtype) {
        Ok(q) => q,
        Err(e) => return Outcome::fail(e),
    };
    if let Err(e) = s.send(&query).await {
        return Outcome::fail(format!("send: {e}"));
    }
    let mut buf = [0u8; 4096];
    match s.recv(&mut buf).await {
        Ok(n) => match dns_answer_ok(id, name, qtype, &buf[..n]) {
            Ok(()) => Outcome::ok(),
            Err(e) => Outcome::fail(e),
        },
        Err(e) => Outcome::fail(format!("{e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{RData, Record, rdata::A};

    fn answer(id: u16, name: &str, qtype: DnsType, rcode: ResponseCode, records: usize) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .set_response_code(rcode)
            .add_query(Query::query(
                name_of(name).expect("name"),
                record_type(qtype),
            ));
        for i in 0..records {
            m.add_answer(Record::from_rdata(
                name_of(name).expect("name"),
                60,
                RData::A(A::new(10, 0, 0, i as u8)),
            ));
        }
        m.to_vec().expect("encodes")
    }

    #[test]
    fn query_and_answer() {
        let q = dns_query(0x1234, "example.com.", DnsType::A).expect("query");
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x07example\x03com\x00\x00\x01\x00\x01");
        let ok = answer(0x1234, "example.com", DnsType::A, ResponseCode::NoError, 1);
        assert_eq!(
            dns_answer_ok(0x1234, "example.com", DnsType::A, &ok),
            Ok(())
        );
        assert_eq!(
            dns_answer_ok(0x1234, "EXAMPLE.com.", DnsType::A, &ok),
            Ok(())
        );
        assert!(
            dns_answer_ok(0x9999, "example.com", DnsType::A, &ok).is_err(),
            "another ID"
        );
        assert!(
            dns_answer_ok(0x1234, "other.com", DnsType::A, &ok).is_err(),
            "another name"
        );
        assert!(
            dns_answer_ok(0x1234, "example.com", DnsType::Aaaa, &ok).is_err(),
            "another type"
        );
        let nx = answer(0x1234, "example.com", DnsType::A, ResponseCode::NXDomain, 0);
        assert!(dns_answer_ok(0x1234, "example.com", DnsType::A, &nx).is_err());
        let empty = answer(0x1234, "example.com", DnsType::A, ResponseCode::NoError, 0);
        assert!(dns_answer_ok(0x1234, "example.com", DnsType::A, &empty).is_err());
        assert!(dns_answer_ok(0x1234, "example.com", DnsType::A, &ok[..5]).is_err());
        assert!(
            dns_answer_ok(0x1234, "example.com", DnsType::A, &q).is_err(),
            "a query"
        );
        // The root, keepalived's default name.
        assert!(dns_query(1, ".", DnsType::Ns).is_ok());
    }
}
