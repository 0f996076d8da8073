//! `cargo afl fuzz -i corpus/dns_full -o out/dns_full target/release/dns_full`: the
//! invariants are `geolb::fuzzing::dns_full`'s.

fn main() {
    afl::fuzz!(|data: &[u8]| geolb::fuzzing::dns_full(data));
}
