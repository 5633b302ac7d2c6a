//! How bytes move: the client-facing listener and protocol detection ([`server`], [`tls`]), the
//! HTTP/1.1 fast path ([`fast`]) and its batched socket writes ([`sends`]), the hyper paths and the
//! proxy service ([`proxy`]), the backend codec and connection pools ([`h1`], [`upstream`]), bodies
//! ([`body`]), the headers a proxy removes or adds ([`hop_by_hop`], [`added`], [`correlation`]) and
//! the shadow-traffic queue ([`mirror`]). What to do with a request is decided in
//! [`crate::routing`].

pub mod added;
pub mod body;
pub mod correlation;
pub mod fast;
pub mod h1;
pub mod hop_by_hop;
pub mod mirror;
pub mod proxy;
pub mod sends;
pub mod server;
pub mod tls;
pub mod upstream;
