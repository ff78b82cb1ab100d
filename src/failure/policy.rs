//! The operator's failure policy: per class of policy-server failure, deny
//! (the default, with the failure's own status or a configured one) or allow
//! (the request goes on unchanged, for the configured methods only, marked for
//! the upstream). Failures outside these classes (the client's request, the
//! host, the response hook's own upstream) always deny.

use super::Failure;
use crate::http::Reply;

/// A class of policy-server failure, as named in the configuration
/// (`on_<class>`), the marker header's value and the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Unreachable, timed out, TLS failure, or a call the host refused.
    Unreachable,
    /// 5xx.
    ServerError,
    /// 4xx other than 413 and 429.
    ClientError,
    /// Not JSON, or not a valid reply.
    MalformedReply,
    /// 429, or the back-off it started.
    RateLimited,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Unreachable => "unreachable",
            Class::ServerError => "server_error",
            Class::ClientError => "client_error",
            Class::MalformedReply => "malformed_reply",
            Class::RateLimited => "rate_limited",
        }
    }

    /// The class of a failure of a sideband call; `None` for the others.
    pub fn of(failure: &Failure) -> Option<Class> {
        match failure {
            Failure::Unreachable { .. } => Some(Class::Unreachable),
            Failure::ServerError { .. } => Some(Class::ServerError),
            Failure::Rejected { .. } => Some(Class::ClientError),
            Failure::NotJson { .. } | Failure::Malformed { .. } => Some(Class::MalformedReply),
            Failure::RateLimited { .. } => Some(Class::RateLimited),
            _ => None,
        }
    }
}

/// What one class leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The failure's reply, with this status instead of its own if given.
    Deny(Option<u16>),
    Allow,
}

impl OnFailure {
    /// `deny`, `deny:<400-599>` or `allow`.
    pub fn parse(v: &str) -> Result<OnFailure, String> {
        let bad =
            || format!("must be \"deny\", \"deny:<status 400-599>\" or \"allow\", got \"{v}\"");
        match v {
            "deny" => Ok(OnFailure::Deny(None)),
            "allow" => Ok(OnFailure::Allow),
            other => {
                let code = other.strip_prefix("deny:").ok_or_else(bad)?;
                let valid = code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
                match code.parse::<u16>() {
                    Ok(n) if valid && (400..=599).contains(&n) => Ok(OnFailure::Deny(Some(n))),
                    _ => Err(bad()),
                }
            }
        }
    }
}

/// The policy of one filter configuration.
#[derive(Debug, Clone)]
pub struct FailurePolicy {
    pub unreachable: OnFailure,
    pub server_error: OnFailure,
    pub client_error: OnFailure,
    pub malformed_reply: OnFailure,
    pub rate_limited: OnFailure,
    /// Methods `Allow` applies to.
    pub methods: Vec<String>,
    /// Lower-cased name of the header marking a request let through.
    pub marker_header: String,
}

impl Default for FailurePolicy {
    /// Fail closed for every class.
    fn default() -> Self {
        FailurePolicy {
            unreachable: OnFailure::Deny(None),
            server_error: OnFailure::Deny(None),
            client_error: OnFailure::Deny(None),
            malformed_reply: OnFailure::Deny(None),
            rate_limited: OnFailure::Deny(None),
            methods: vec!["GET".into(), "HEAD".into(), "OPTIONS".into()],
            marker_header: "x-ping-auth-fail-open".into(),
        }
    }
}

/// The verdict on one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answer the client with this reply.
    Deny(Reply),
    /// Let the request go on unchanged, marked with this class.
    Allow(Class),
}

impl FailurePolicy {
    fn on(&self, class: Class) -> OnFailure {
        match class {
            Class::Unreachable => self.unreachable,
            Class::ServerError => self.server_error,
            Class::ClientError => self.client_error,
            Class::MalformedReply => self.malformed_reply,
            Class::RateLimited => self.rate_limited,
        }
    }

    /// What `failure` of a request with `method` leads to.
    pub fn verdict(&self, failure: &Failure, method: &str) -> Verdict {
        let class = Class::of(failure);
        let on = class.map_or(OnFailure::Deny(None), |c| self.on(c));
        match (on, class) {
            (OnFailure::Allow, Some(c)) if self.methods.iter().any(|m| m == method) => {
                Verdict::Allow(c)
            }
            (OnFailure::Deny(Some(status)), _) => Verdict::Deny(Reply {
                status,
                ..failure.reply()
            }),
            _ => Verdict::Deny(failure.reply()),
        }
    }

    /// The stable log line of a request let through (never the path, which
    /// may carry credentials; never the secret).
    pub fn fail_open_line(class: Class, method: &str, failure: &Failure) -> String {
        format!(
            "fail-open: class={} method={method} would_deny_status={}",
            class.name(),
            failure.reply().status
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Call;

    fn server_error() -> Failure {
        Failure::ServerError {
            call: Call::Request,
            status: 503,
            message: "m".into(),
            id: "i".into(),
        }
    }

    #[test]
    fn actions_parse_as_the_schemas_say() {
        assert_eq!(OnFailure::parse("deny"), Ok(OnFailure::Deny(None)));
        assert_eq!(OnFailure::parse("allow"), Ok(OnFailure::Allow));
        assert_eq!(OnFailure::parse("deny:503"), Ok(OnFailure::Deny(Some(503))));
        for bad in [
            "Deny",
            "deny:200",
            "deny:600",
            "deny:5031",
            "deny:",
            "deny:+50",
            "open",
            "",
        ] {
            assert!(OnFailure::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verdicts_follow_class_action_and_method() {
        let mut p = FailurePolicy::default();
        assert_eq!(
            p.verdict(&server_error(), "GET"),
            Verdict::Deny(Reply::empty(502))
        );
        p.server_error = OnFailure::Allow;
        assert_eq!(
            p.verdict(&server_error(), "GET"),
            Verdict::Allow(Class::ServerError)
        );
        assert_eq!(
            p.verdict(&server_error(), "POST"),
            Verdict::Deny(Reply::empty(502))
        );
        p.server_error = OnFailure::Deny(Some(503));
        assert_eq!(
            p.verdict(&server_error(), "POST"),
            Verdict::Deny(Reply::empty(503))
        );
        // Outside the classes: always the failure's reply.
        p.unreachable = OnFailure::Allow;
        let other = Failure::TooManyHeaders { visible: 96 };
        assert_eq!(p.verdict(&other, "GET"), Verdict::Deny(Reply::empty(431)));
        // A 429 keeps its Retry-After with a configured status.
        p.rate_limited = OnFailure::Deny(Some(503));
        let limited = Failure::RateLimited {
            retry_after_secs: 5,
            from_provider: true,
        };
        let Verdict::Deny(r) = p.verdict(&limited, "GET") else {
            panic!("deny expected")
        };
        assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    }

    #[test]
    fn every_sideband_failure_has_a_class() {
        let unreachable = Failure::Unreachable {
            call: Call::Response,
            target: "t".into(),
            detail: "timeout".into(),
        };
        let not_json = Failure::NotJson {
            call: Call::Request,
            status: 200,
            error: "e".into(),
        };
        let too_large = Failure::TooLarge {
            call: Call::Request,
            body: vec![],
            message: "m".into(),
            id: "i".into(),
        };
        assert_eq!(Class::of(&unreachable), Some(Class::Unreachable));
        assert_eq!(Class::of(&not_json), Some(Class::MalformedReply));
        // 413 is relayed as the policy wrote it, never a class.
        assert_eq!(Class::of(&too_large), None);
    }
}
