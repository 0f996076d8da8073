//! `cargo afl fuzz -i corpus/http_head -o out/http_head target/release/http_head`: the
//! invariants are `geolb::fuzzing::http_head`'s.

fn main() {
    afl::fuzz!(|data: &[u8]| geolb::fuzzing::http_head(data));
}
