//! `deputy jwt fetch` and `deputy jwt validate`.

use std::process::ExitCode;

use crate::endpoint;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum JwtCommand {
    /// Fetch a JWT-SVID for an audience; prints the token on stdout.
    Fetch {
        /// Who the token is for (its `aud`); repeat for several.
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Ask for this SPIFFE ID when the caller is entitled to several.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Workload API socket (path or unix:// URI).
        #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = endpoint::DEFAULT)]
        socket: String,
    },
    /// Validate a JWT-SVID through the Workload API; prints its SPIFFE ID and claims.
    Validate {
        /// The token (compact JWS).
        token: String,
        /// The audience this validator is (must be in the token's `aud`).
        #[arg(long)]
        audience: String,
        /// Workload API socket (path or unix:// URI).
        #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = endpoint::DEFAULT)]
        socket: String,
    },
}

pub(crate) async fn run(command: JwtCommand) -> anyhow::Result<ExitCode> {
    match command {
        JwtCommand::Fetch {
            audience,
            spiffe_id,
            socket,
        } => {
            let client = endpoint::connect(&socket).await?;
            let spiffe_id = spiffe_id
                .map(|id| deputy_identity::parse_spiffe_id(&id))
                .transpose()?;
            let token = client
                .fetch_jwt_token(&audience, spiffe_id.as_ref())
                .await
                .map_err(endpoint::explain)?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        JwtCommand::Validate {
            token,
            audience,
            socket,
        } => {
            let client = endpoint::connect(&socket).await?;
            match client.validate_jwt_token(&audience, &token).await {
                Ok(svid) => {
                    println!("SPIFFE ID: {}", svid.spiffe_id());
                    println!("Audience:  {}", svid.audience().join(", "));
                    println!("Expires:   {}", svid.expiry());
                    println!("Valid:     yes");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("invalid JWT-SVID: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
