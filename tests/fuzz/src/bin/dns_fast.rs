//! `cargo afl fuzz -i corpus/dns_fast -o out/dns_fast target/release/dns_fast`: the
//! invariants are `geolb::fuzzing::dns_fast`'s.

fn main() {
    afl::fuzz!(|data: &[u8]| geolb::fuzzing::dns_fast(data));
}
