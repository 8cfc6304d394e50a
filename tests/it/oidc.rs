//! Bearer tokens from an identity provider: keys generated here (Ed25519 and P-256 with
//! ring, RSA with the openssl command), a JWKS served on 127.0.0.1, tokens minted per case.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair;
use serde_json::{Value, json};

use crate::audit::{find, wait_for_outcomes};
use crate::support::{Server, error_code};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "lakeledger";

struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn ed25519(kid: &str) -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = B64.encode(pair.public_key().as_ref());
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    }
}

fn p256(kid: &str) -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref(); // 0x04 || x || y
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]), "kid": kid, "alg": "ES256", "use": "sig"}),
    }
}

fn rsa(kid: &str, dir: &std::path::Path) -> SigningKey {
    let pem = dir.join(format!("{kid}.pem"));
    let der = dir.join(format!("{kid}.der"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().expect("the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&["genrsa", "-out", pem.to_str().unwrap(), "2048"]);
    run(&["rsa", "-in", pem.to_str().unwrap(), "-traditional", "-outform", "DER", "-out", der.to_str().unwrap()]);
    let modulus = run(&["rsa", "-in", pem.to_str().unwrap(), "-noout", "-modulus"]);
    let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_der(&std::fs::read(&der).unwrap()),
        jwk: json!({"kty": "RSA", "n": B64.encode(n), "e": "AQAB", "kid": kid, "alg": "RS256", "use": "sig"}),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(k: &SigningKey, claims: Value) -> String {
    let mut header = Header::new(k.alg);
    header.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&header, &claims, &k.key).unwrap()
}

fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now() + 300, "iat": now()});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_identity_provider_are_verified_and_mapped_to_tenants_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (ed, ec, rs) = (ed25519("ed-1"), p256("ec-1"), rsa("rsa-1", dir.path()));
    let later = ed25519("ed-2");
    // The provider's JWKS, served here; `later` is published only once rotated in.
    let published = Arc::new(Mutex::new(vec![ed.jwk.clone(), ec.jwk.clone(), rs.jwk.clone()]));
    let keys = published.clone();
    let idp = axum::Router::new().route("/jwks", axum::routing::get(move || {
        let keys = keys.lock().unwrap().clone();
        async move { axum::Json(json!({"keys": keys})) }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, idp).await.unwrap() });

    let mut config = lakeledger::app::config::Config::embedded(dir.path().join("data")).unwrap();
    config.oidc = Some(
        toml::from_str(&format!(
            "issuer = '{ISSUER}'\naudience = '{AUDIENCE}'\njwks_url = 'http://{idp_addr}/jwks'\njwks_min_refresh_seconds = 0\n\
             groups_claim = 'groups'\n[[groups]]\ngroup = 'ml-platform'\ntenant = 'default'\nrole = 'admin'\n"
        ))
        .unwrap(),
    );
    let s = Server::start_with(config, None).await;
    let admin = s.admin_key.clone();
    s.create_clicks(&admin).await;
    assert_eq!(s.post(&admin, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap().status(), 201);

    // Every accepted algorithm, mapped by claims.
    for (k, sub) in [(&ed, "alice"), (&ec, "bob"), (&rs, "carol")] {
        let t = token(k, claims(sub, json!({"tenant": "default", "role": "reader", "preferred_username": sub})));
        let r = s.get(&t, "/v1/whoami").header("x-request-id", format!("oidc-{sub}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{:?}: {}", k.alg, r.text().await.unwrap());
        let me: Value = r.json().await.unwrap();
        assert_eq!((me["tenant"].as_str(), me["role"].as_str(), me["auth_method"].as_str()), (Some("default"), Some("reader"), Some("oidc")));
        assert_eq!(me["key_id"], format!("{ISSUER}#{sub}"));
    }
    // The audit record names issuer and subject.
    let all = wait_for_outcomes(&s, &["oidc-alice".into()]).await;
    let actor = &find(&all, "oidc-alice", "intent").unwrap()["actor"];
    assert_eq!((actor["principal"].as_str(), actor["principal_type"].as_str()), (Some("https://idp.example#alice"), Some("oidc")));

    // The role is enforced like a key's: a reader cannot write.
    let reader = token(&ed, claims("alice", json!({"tenant": "default", "role": "reader"})));
    let r = s.post(&reader, "/v1/feature-groups/clicks/data").json(&json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).send().await.unwrap();
    assert_eq!(error_code(r, 403).await.0, "forbidden");
    // A group the token lists grants what the config maps it to.
    let platform = token(&ec, claims("dave", json!({"groups": ["staff", "ml-platform"]})));
    let me: Value = s.get(&platform, "/v1/whoami").send().await.unwrap().json().await.unwrap();
    assert_eq!((me["tenant"].as_str(), me["role"].as_str()), (Some("default"), Some("admin")));
    // A token for another tenant sees that tenant only.
    let acme = token(&rs, claims("erin", json!({"tenant": "acme", "role": "admin"})));
    assert_eq!(s.get(&acme, "/v1/whoami").send().await.unwrap().json::<Value>().await.unwrap()["tenant"], "acme");
    assert_eq!(error_code(s.get(&acme, "/v1/feature-groups/clicks").send().await.unwrap(), 404).await.0, "feature_group_not_found");

    // Refused, each saying why.
    let refused = [
        (token(&ed, claims("x", json!({"tenant": "default", "role": "reader", "exp": now() - 3600}))), "expired"),
        (token(&ed, claims("x", json!({"tenant": "default", "role": "reader", "aud": "someone-else"}))), "audience"),
        (token(&ed, claims("x", json!({"tenant": "default", "role": "reader", "iss": "https://evil.example"}))), "issuer"),
        (token(&ed, claims("x", json!({"tenant": "default", "role": "reader", "nbf": now() + 3600}))), "not valid yet"),
        (token(&later, claims("x", json!({"tenant": "default", "role": "reader"}))), "not in the issuer's key set"),
        (token(&ed, claims("x", json!({"tenant": "nowhere", "role": "reader"}))), "does not exist"),
        (token(&ed, claims("x", json!({"tenant": "default", "role": "owner"}))), "role `owner`"),
        (token(&ed, claims("x", json!({"role": "reader"}))), "no tenant"),
    ];
    for (t, why) in refused {
        let (code, message) = error_code(s.get(&t, "/v1/whoami").send().await.unwrap(), 401).await;
        assert_eq!(code, "invalid_token");
        assert!(message.contains(why), "{why}: {message}");
    }
    // A token signed with a shared secret is never accepted, whatever key id it names.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("ed-1".into());
    let hs = jsonwebtoken::encode(&header, &claims("x", json!({"tenant": "default", "role": "admin"})), &EncodingKey::from_secret(b"guess")).unwrap();
    let (_, message) = error_code(s.get(&hs, "/v1/whoami").send().await.unwrap(), 401).await;
    assert!(message.contains("HS256"), "{message}");
    // A forged signature under a published key id.
    let forged = token(&SigningKey { kid: "ed-1".into(), ..ed25519("x") }, claims("x", json!({"tenant": "default", "role": "admin"})));
    let (_, message) = error_code(s.get(&forged, "/v1/whoami").send().await.unwrap(), 401).await;
    assert!(message.contains("signature"), "{message}");

    // The provider rotates in a new key: the server fetches the set again on its key id.
    published.lock().unwrap().push(later.jwk.clone());
    let t = token(&later, claims("frank", json!({"tenant": "default", "role": "reader"})));
    assert_eq!(s.get(&t, "/v1/whoami").send().await.unwrap().status(), 200);
    // API keys keep working beside tokens.
    assert_eq!(s.get(&admin, "/v1/whoami").send().await.unwrap().status(), 200);
}
