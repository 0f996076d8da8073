//! `cargo afl fuzz -i corpus/config -o out/config target/release/config`: the
//! invariants are `geolb::fuzzing::config`'s.

fn main() {
    afl::fuzz!(|data: &[u8]| geolb::fuzzing::config(data));
}
