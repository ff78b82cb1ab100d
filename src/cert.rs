//! Client certificate (PEM) to JWK + x5c. Owned by the cert helper.
