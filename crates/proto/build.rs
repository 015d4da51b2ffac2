//! Compiles the `.proto` files under `proto/` with protox, so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("hush/ca/v1/ca.proto"),
        root.join("istio/v1/auth/ca.proto"),
        root.join("spiffe/workload/workload.proto"),
    ];
    // Relative to the package, as Cargo reads it: an absolute path would tie the build output
    // to one checkout, and another checkout sharing the target directory would not rebuild.
    for file in [
        "hush/ca/v1/ca.proto",
        "istio/v1/auth/ca.proto",
        "spiffe/workload/workload.proto",
    ] {
        println!("cargo:rerun-if-changed=../../proto/{file}");
    }
    let descriptors = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
