//! The caller as the HTTP edge knows it. Authentication itself happens once, in the
//! recording layer (so that every request, refused ones too, is recorded with its actor);
//! handlers take the result from the request extensions.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::state::AppState;
use crate::error::{Error, Result};
use crate::identity::Principal;

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self> {
        match parts.extensions.get::<AuthOutcome>() {
            Some(AuthOutcome::Ok(p)) => Ok(Caller(p.clone())),
            Some(AuthOutcome::Failed(e)) => Err(e.to_error()),
            None => Err(Error::Unauthenticated),
        }
    }
}

/// What the request layer found in the `Authorization` header.
#[derive(Clone, Debug)]
pub enum AuthOutcome {
    Ok(Principal),
    Failed(AuthFailure),
}

#[derive(Clone, Debug)]
pub enum AuthFailure {
    Missing,
    Invalid,
    /// A bearer token that does not verify, and why.
    Token(String),
    Unavailable,
}

impl AuthFailure {
    pub fn to_error(&self) -> Error {
        match self {
            AuthFailure::Missing => Error::Unauthenticated,
            AuthFailure::Invalid => Error::InvalidKey,
            AuthFailure::Token(why) => Error::InvalidToken(why.clone()),
            AuthFailure::Unavailable => Error::Unavailable("the catalog is not reachable; try again".into()),
        }
    }
}
