//! Key pairs for tests only, generated once with the `openssl` CLI
//! (`genrsa 2048`, `genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`).
//! Private halves are base64 DER (PKCS#1 for RSA, PKCS#8 for EC) so signing
//! needs no PEM parser; public halves are the JWK members a key set carries.
//! They protect nothing: never use them outside tests.

pub const RSA_PRIVATE_DER: &str = "MIIEowIBAAKCAQEAp46jlGyaQN05nx/aeYA/Ve2ecjz5Odhqm6JhN/FVQu3RrABRyJ/w+Fip9CIilS4rFLqyDgv2\
/VNRog7QqGxMZ8Lj5uZDyAI52fIscXCmJVqbXw8aGhD9q1pFlWmqOh/aUv1JPqk+zaZHZwEP8f9wE32WuSYz3Ojs\
fUBgCg/tIvKc4xb8+McWIty0RVIyCQMPkd9WDx+eW5yt0bM2Ikkwwq/YmHigZShqF1UbM6iEu1czBaVtnAnz3UPr\
vdVZA56znEst1LzCmXHsB/8WFC086E3/uM30hFJmw3whGNjJ7qPJE0/76rsbBfQt+UlT5DiVH82K4an0LNi4LJOB\
yrzkWwIDAQABAoIBABhRDA5TQIOfV2hvb/5oDUkEJhWAIc8ySC5z/1XmETCYYPBsT3IlPAxembOTbJ9nxtrISWTe\
eabD+7ngGooGxYPddcOhsT6KjCjEC40fAw2yu4+tGmWkB5xhim2nmwu6aa3XklSkrTedJQmeztiY8IPzmvcdwzMR\
HpkCya1MKGcEwE1b7b3fk4SJIQNP8UUNfRadnPvP6DFLGzwWF8IVERe+ebdX+kZSDOlnUiIJbetBn+tDmSPG4rrr\
iGnzk28Kj7gwpsmVQwCjtJEuTdL8W8otgUYDPqN/X1wJ5Mt7N3KLi7adiQMMD1AgOaP5PJigLXyC6ea2IFpa1LxT\
nTeErvECgYEA4LwoJXqJU+IsZi5lhwIs8BnfPgj4ruIJwICbd5Ra0wtJmNDRBAhGzHwzlxE4ItQtkmMk4yzxBdyY\
BAZkiE8ZjwnMGATb8Bu174w/O5tnPcEaLpJDmnfX6xORUyVZNJpd+mJL9+sT+tZUkQwy1zvdwd14Pioo4DPKQNbM\
xiCJo8kCgYEAvt4eUbmVOdafFz/Wm6hd9xd1wV6MP3bms/QB+SxWckIw44r+bQJadpC1RYtzbNbj/ZRUjH8VvWyS\
TIE0bo1UieQ7H1WEDaDy1f8M1WdajaIRIwQFGVlgs4b4iUcgb7vRyqZSwWtQ0pvJBDLAEhK71AVpO8UK1VpTo2to\
UsTSsQMCgYEAsn1eWV34QhJJdyJ0aoUU0eGKiAeyE5vdaPH8CD5g4Gt/mYqH5273ZCNlCh+X+TmRtElgG7ou95vb\
dJ7rK8O/Jfb/DTiWwh4QIuC9vAbSOZ7rv39ViBKU/9S7wFDSh8/uwhVeBtrDNJ8T7VvF6WJX30iZ3q23Z1Ja2aKA\
Yv+msdkCgYBbBSemR38PTvcdKjdYkakFzW09Yq41EamhBWrvfaJX6JLR4BXGvEmRox6e5IqNy8h7xAGx4mTmqWD3\
FOKBGerHu0wqfCh2K1vCi1d+aUQ4qKHNdfxMg1/nHSVmqcGhJws7vadXT6sCVII++0i3FbH2wQHXG/c3mVSraOwe\
FHh5KwKBgH70efkIz8UkbFPeKx/FjUeTLJE9p2I1QI1AoPK4CMIE88thhLvCG6FPVcXk95cyXXG5vP1veNzS5Z34\
2TNmEyCQqmckvkWihwNVZQv+TLejif29L2hh8FmnN1tXZzHeTh5J1AN/+XzMXsFtfnFKRdrLsdLMamo3sT1SFSad\
SBMX";
pub const RSA_N: &str = "p46jlGyaQN05nx_aeYA_Ve2ecjz5Odhqm6JhN_FVQu3RrABRyJ_w-Fip9CIilS4rFLqyDgv2_VNRog7QqGxMZ8Lj5uZDyAI52fIscXCmJVqbXw8aGhD9q1pFlWmqOh_aUv1JPqk-zaZHZwEP8f9wE32WuSYz3OjsfUBgCg_tIvKc4xb8-McWIty0RVIyCQMPkd9WDx-eW5yt0bM2Ikkwwq_YmHigZShqF1UbM6iEu1czBaVtnAnz3UPrvdVZA56znEst1LzCmXHsB_8WFC086E3_uM30hFJmw3whGNjJ7qPJE0_76rsbBfQt-UlT5DiVH82K4an0LNi4LJOByrzkWw";
pub const RSA_E: &str = "AQAB";

pub const EC1_PRIVATE_DER: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8C8zQ7P2C0r88cjwkA0rMLozP8gP+NfxIK7CI7hI6bChRANCAASYa9/0/mX6J1JdUncmBTVTtcgllj6adw3sy6DLtQPb/LeRiZguSx77i7LihVCbb6/CIiHf2yFy8dfF2IPI2F4Q";
pub const EC1_X: &str = "mGvf9P5l-idSXVJ3JgU1U7XIJZY-mncN7Mugy7UD2_w";
pub const EC1_Y: &str = "t5GJmC5LHvuLsuKFUJtvr8IiId_bIXLx18XYg8jYXhA";

pub const EC2_PRIVATE_DER: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrGAenhAbY8LKuqFOugQfEPZWurmI4XOaEdle4rdwwU2hRANCAAQXYMXWwf9grGFKAfasEh57NmBoJ755illib+OrXcIM6/DN8G220NeJxWTcvXnI48rLK/gG2mjIyK9Yem73Zkop";
pub const EC2_X: &str = "F2DF1sH_YKxhSgH2rBIeezZgaCe-eYpZYm_jq13CDOs";
pub const EC2_Y: &str = "8M3wbbbQ14nFZNy9ecjjyssr-AbaaMjIr1h6bvdmSik";

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn der(text: &str) -> Vec<u8> {
    STANDARD
        .decode(text)
        .expect("test key constants are base64")
}

pub fn rsa_encoding_key() -> EncodingKey {
    EncodingKey::from_rsa_der(&der(RSA_PRIVATE_DER))
}

pub fn ec1_encoding_key() -> EncodingKey {
    EncodingKey::from_ec_der(&der(EC1_PRIVATE_DER))
}

pub fn ec2_encoding_key() -> EncodingKey {
    EncodingKey::from_ec_der(&der(EC2_PRIVATE_DER))
}

pub fn rsa_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": RSA_N, "e": RSA_E})
}

pub fn ec1_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": EC1_X, "y": EC1_Y})
}

pub fn ec2_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid, "x": EC2_X, "y": EC2_Y})
}

pub fn rs256_header(kid: &str) -> Header {
    Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::RS256)
    }
}

pub fn es256_header(kid: &str) -> Header {
    Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::ES256)
    }
}

/// A compact JWS of `payload` under `header`, signed with `key`.
pub fn sign(header: Header, payload: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, payload, key).expect("test tokens sign")
}
