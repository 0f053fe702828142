#!/usr/bin/env python3
"""A SPIFFE Workload API client written with py-spiffe (Python, on grpcio), used with its
default settings. Deputy's interop tests run it against `deputy issuer`: grpcio sends the socket
path as the HTTP/2 :authority, which the issuer must accept as a SPIRE agent does.

Each command prints one JSON object on stdout and exits 0, or prints the error and exits 1:

    spiffe_client.py --socket unix:///path x509          the X.509-SVID and its bundle
    spiffe_client.py --socket unix:///path jwt --audience A
                                                         a JWT-SVID for A, validated by the API
"""

import argparse
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import WorkloadApiClient


def fetch_x509(client):
    svid = client.fetch_x509_svid()
    bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    if bundle is None:
        raise RuntimeError(f"no X.509 bundle for {svid.spiffe_id.trust_domain}")
    leaf = svid.leaf
    # The leaf must be signed by one of the served authorities (the issuer's CAs are ECDSA).
    signed_by_bundle = False
    for authority in bundle.x509_authorities:
        try:
            authority.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes,
                                          ec.ECDSA(leaf.signature_hash_algorithm))
            signed_by_bundle = True
        except Exception:  # another authority, or not ECDSA: try the next
            continue
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName) \
        .value.get_values_for_type(x509.UniformResourceIdentifier)
    return {
        "spiffe_id": str(svid.spiffe_id),
        "uri_sans": uris,
        "serial": str(leaf.serial_number),
        "not_after": leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "authorities": len(bundle.x509_authorities),
        "signed_by_bundle": signed_by_bundle,
        "private_key": type(svid.private_key).__name__,
    }


def fetch_jwt(client, audience):
    svid = client.fetch_jwt_svid(audience={audience})
    validated = client.validate_jwt_svid(svid.token, audience)
    try:
        client.validate_jwt_svid(svid.token, "someone-else")
        other = None
    except Exception as e:  # the refusal is what the test reads
        other = str(e)
    return {
        "spiffe_id": str(svid.spiffe_id),
        "audience": sorted(svid.audience),
        "validated_as": str(validated.spiffe_id),
        "other_audience_refused": other,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="Workload API address (unix:///path)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("x509")
    jwt = commands.add_parser("jwt")
    jwt.add_argument("--audience", required=True)
    args = parser.parse_args()
    try:
        with WorkloadApiClient(socket_path=args.socket) as client:
            if args.command == "x509":
                result = fetch_x509(client)
            else:
                result = fetch_jwt(client, args.audience)
    except Exception as e:
        sys.exit(f"spiffe_client.py: {type(e).__name__}: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
