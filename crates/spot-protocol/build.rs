//! Generates the protobuf types from proto/spot_events.proto with prost, compiling the
//! schema with protox (pure Rust), so the build needs no system `protoc`.

fn main() {
    const PROTO: &str = "proto/spot_events.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = match protox::compile([PROTO], ["proto"]) {
        Ok(d) => d,
        Err(e) => panic!("{PROTO} does not compile: {e:?}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(descriptors) {
        panic!("prost code generation failed: {e}");
    }
}
