//! Client JWTs (`Auth::verify`) and resume tokens (`Auth::verify_resume`) on
//! arbitrary text, against two configurations: HS256 with a required
//! audience, and ES256 (a test key pair in fuzz/keys) plus HS256 without one.
//!
//! Asserts: no panic; an accepted JWT yields a valid user id, a valid tenant
//! if any, and its `exp`; the resume token signed for that identity verifies
//! back to it; no text is both a client JWT and a resume token (their keys
//! differ); an accepted resume token verifies the same on both instances
//! (they share the resume secret).
#![no_main]

use std::sync::OnceLock;

use chorus_gateway::Config;
use chorus_gateway::auth::Auth;
use chorus_gateway::names::{valid_tenant, valid_user};
use libfuzzer_sys::fuzz_target;

/// Secrets the seed corpus (fuzz/corpus/auth_token) was signed with.
const JWT_SECRET: &str = "fuzz-jwt-secret";
const RESUME_SECRET: &str = "fuzz-resume-secret";
const AUDIENCE: &str = "chorus-fuzz";

/// `Auth::verify` is async (a JWKS may need a read); without a JWKS it never
/// waits, so one current-thread runtime drives it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fuzz runtime")
    })
}

fn auths() -> &'static [Auth; 2] {
    static AUTHS: OnceLock<[Auth; 2]> = OnceLock::new();
    AUTHS.get_or_init(|| {
        let make = |extra: &[&str]| {
            let mut args = vec![
                "chorus",
                "--jwt-secret",
                JWT_SECRET,
                "--resume-secret",
                RESUME_SECRET,
            ];
            args.extend_from_slice(extra);
            {
                let cfg = Config::from_args(args).expect("fuzz config");
                Auth::new(&cfg.auth, cfg.dev_auth()).expect("fuzz auth")
            }
        };
        let public = concat!(env!("CARGO_MANIFEST_DIR"), "/keys/es256-public.pem");
        [
            make(&["--jwt-audience", AUDIENCE]),
            make(&["--jwt-public-key", public]),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let [a, b] = auths();
    let grants = [a.verify_resume(token), b.verify_resume(token)];
    assert_eq!(grants[0], grants[1], "resume token {token:?}");
    for auth in [a, b] {
        let Ok(id) = runtime().block_on(auth.verify(token)) else {
            continue;
        };
        assert!(valid_user(&id.user), "user of {token:?}: {id:?}");
        if let Some(t) = &id.tenant {
            assert!(valid_tenant(t), "tenant of {token:?}: {id:?}");
        }
        assert!(id.exp.is_some());
        assert!(grants[0].is_none(), "{token:?} is a JWT and a resume token");
        let resume = auth.resume_token("fuzz-session", &id);
        let g = auth.verify_resume(&resume).expect("own resume token");
        assert_eq!(
            (g.session.as_str(), &g.user, &g.tenant),
            ("fuzz-session", &id.user, &id.tenant)
        );
        // The ACL and namespacing helpers on what the token carried.
        for room in ["general", "dm:a:b", "team-x"] {
            let _ = id.allows(room);
        }
        if let Some(rooms) = &id.rooms {
            for r in rooms {
                let _ = id.allows(r);
            }
        }
        let _ = id.room_key("general");
        let _ = id.user_key();
    }
});
