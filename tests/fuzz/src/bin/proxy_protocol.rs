//! `cargo afl fuzz -i corpus/proxy_protocol -o out/proxy_protocol target/release/proxy_protocol`: the
//! invariants are `geolb::fuzzing::proxy_protocol`'s.

fn main() {
    afl::fuzz!(|data: &[u8]| geolb::fuzzing::proxy_protocol(data));
}
