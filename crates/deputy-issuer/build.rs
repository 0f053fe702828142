//! Generates the gRPC servers (and test clients) for the SPIFFE Workload API and SPIRE's
//! Delegated Identity API from the vendored `.proto` files. `protox` parses them in Rust, so no
//! `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/workload.proto",
        "proto/spire/api/agent/delegatedidentity/v1/delegatedidentity.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // These messages carry private keys or bearer tokens: their Debug is written by hand so
        // that a stray `{:?}` in a log line cannot leak them.
        .skip_debug([
            ".X509SVID",
            ".JWTSVID",
            ".X509SVIDResponse",
            ".JWTSVIDResponse",
            ".ValidateJWTSVIDRequest",
            ".spire.api.agent.delegatedidentity.v1.X509SVIDWithKey",
            ".spire.api.agent.delegatedidentity.v1.SubscribeToX509SVIDsResponse",
            ".spire.api.types.JWTSVID",
            ".spire.api.agent.delegatedidentity.v1.FetchJWTSVIDsResponse",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
