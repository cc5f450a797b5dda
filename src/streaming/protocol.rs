//! Protocol names and negotiation for the remotecommand and port-forward upgrades, as kubelet's
//! streaming server does them (`httpstream.Handshake` for SPDY: the first of the client's
//! `X-Stream-Protocol-Version` values the server supports, in the client's order; apimachinery
//! `wsstream` for WebSocket: the first supported `Sec-WebSocket-Protocol` value; no value offered
//! means the oldest protocol).

/// A remotecommand protocol version (client-go `remotecommand` v1..v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RcVersion {
    /// `channel.k8s.io`: errors as plain text, no resize stream.
    V1,
    /// `v2.channel.k8s.io`: like v1 without v1's stream quirks.
    V2,
    /// `v3.channel.k8s.io`: adds the `resize` stream for tty sessions.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a JSON `metav1.Status` (exit codes).
    V4,
    /// `v5.channel.k8s.io`: v4 plus the WebSocket close signal (channel 255).
    V5,
}

impl RcVersion {
    /// The wire name of the SPDY/WebSocket protocol (without a `base64.` infix).
    pub fn name(self) -> &'static str {
        match self {
            RcVersion::V1 => "channel.k8s.io",
            RcVersion::V2 => "v2.channel.k8s.io",
            RcVersion::V3 => "v3.channel.k8s.io",
            RcVersion::V4 => "v4.channel.k8s.io",
            RcVersion::V5 => "v5.channel.k8s.io",
        }
    }

    /// True when a tty session has a resize stream (v3+; over WebSocket channel 4 always exists).
    pub fn has_resize(self) -> bool {
        self >= RcVersion::V3
    }

    /// True when the error stream carries a `metav1.Status` JSON (v4+), not bare text.
    pub fn status_json(self) -> bool {
        self >= RcVersion::V4
    }
}

/// SPDY protocols the exec/attach endpoints accept (kubelet `remotecommand.SupportedStreamingProtocols`).
pub const SPDY_RC_PROTOCOLS: [RcVersion; 5] = [RcVersion::V5, RcVersion::V4, RcVersion::V3, RcVersion::V2, RcVersion::V1];

/// The only SPDY port-forward protocol (`portforward.k8s.io`).
pub const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// What a WebSocket client gets: the version, whether frames are base64 text, and the exact
/// subprotocol string to answer (empty when the client offered none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsChoice {
    /// Protocol version (port-forward over WebSocket uses V4 framing, or V1 for the legacy names).
    pub version: RcVersion,
    /// `base64.` variant: text frames, channel as an ASCII digit, payload in standard base64.
    pub base64: bool,
    /// The `Sec-WebSocket-Protocol` value to send back ("" = send no header).
    pub answer: String,
    /// `SPDY/3.1+portforward.k8s.io`: SPDY frames tunnelled in binary messages (kubectl ≥ 1.31
    /// port-forward over WebSocket); `version`/`base64` are then meaningless.
    pub spdy_tunnel: bool,
}

/// The WebSocket subprotocol that tunnels a SPDY `portforward.k8s.io` session.
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Splits a header's comma-separated values (`X-Stream-Protocol-Version` may also repeat).
pub fn split_values<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values.into_iter().flat_map(|v| v.split(',')).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// Negotiates a SPDY remotecommand version. `Ok(None)`: the client offered nothing (kubelet falls
/// back to v1). `Err(())`: nothing in common (kubelet answers 403 "unable to negotiate protocol").
#[allow(clippy::result_unit_err)]
pub fn negotiate_spdy_rc(offered: &[String]) -> Result<Option<RcVersion>, ()> {
    if offered.is_empty() {
        return Ok(None);
    }
    offered.iter().find_map(|o| SPDY_RC_PROTOCOLS.iter().copied().find(|v| v.name() == o)).map(Some).ok_or(())
}

/// Negotiates a SPDY port-forward protocol: only `portforward.k8s.io` exists.
#[allow(clippy::result_unit_err)]
pub fn negotiate_spdy_pf(offered: &[String]) -> Result<Option<&'static str>, ()> {
    if offered.is_empty() {
        return Ok(None);
    }
    offered.iter().any(|o| o == PORTFORWARD_PROTOCOL).then_some(Some(PORTFORWARD_PROTOCOL)).ok_or(())
}

fn ws_parse(name: &str) -> Option<(RcVersion, bool)> {
    let (version, rest) = match name.split_once('.') {
        Some(("v5", rest)) => (RcVersion::V5, rest),
        Some(("v4", rest)) => (RcVersion::V4, rest),
        _ => (RcVersion::V1, name),
    };
    match rest {
        "channel.k8s.io" => Some((version, false)),
        "base64.channel.k8s.io" => Some((version, true)),
        _ => None,
    }
}

/// Negotiates a WebSocket subprotocol for exec/attach (`v5.`, `v4.`, legacy `channel.k8s.io`,
/// each also as `base64.`) or, with `portforward`, for port-forward (`v4.` and the legacy names;
/// kubelet's port-forward WebSocket has no v5; plus the SPDY tunnel). No offer = legacy binary framing. `None`: the
/// client offered only unknown protocols.
pub fn negotiate_ws(offered: &[String], portforward: bool) -> Option<WsChoice> {
    if offered.is_empty() {
        return Some(WsChoice { version: RcVersion::V1, base64: false, answer: String::new(), spdy_tunnel: false });
    }
    offered.iter().find_map(|o| {
        if portforward && o == SPDY_TUNNEL_PROTOCOL {
            return Some(WsChoice { version: RcVersion::V1, base64: false, answer: o.clone(), spdy_tunnel: true });
        }
        let (version, base64) = ws_parse(o)?;
        if portforward && version == RcVersion::V5 {
            return None;
        }
        Some(WsChoice { version, base64, answer: o.clone(), spdy_tunnel: false })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn spdy_client_order_wins() {
        assert_eq!(negotiate_spdy_rc(&v(&["v4.channel.k8s.io", "v5.channel.k8s.io"])), Ok(Some(RcVersion::V4)));
        assert_eq!(negotiate_spdy_rc(&v(&["v9.channel.k8s.io", "v2.channel.k8s.io"])), Ok(Some(RcVersion::V2)));
        assert_eq!(negotiate_spdy_rc(&[]), Ok(None));
        assert_eq!(negotiate_spdy_rc(&v(&["portforward.k8s.io"])), Err(()));
        assert_eq!(negotiate_spdy_pf(&v(&["portforward.k8s.io"])), Ok(Some(PORTFORWARD_PROTOCOL)));
        assert_eq!(negotiate_spdy_pf(&v(&["v4.channel.k8s.io"])), Err(()));
        assert_eq!(split_values(["a, b", "c"]), v(&["a", "b", "c"]));
    }

    #[test]
    fn websocket_choices() {
        let c = negotiate_ws(&v(&["foo", "v5.channel.k8s.io", "v4.channel.k8s.io"]), false).unwrap();
        assert_eq!((c.version, c.base64, c.answer.as_str()), (RcVersion::V5, false, "v5.channel.k8s.io"));
        let c = negotiate_ws(&v(&["v4.base64.channel.k8s.io"]), false).unwrap();
        assert_eq!((c.version, c.base64), (RcVersion::V4, true));
        let c = negotiate_ws(&v(&["base64.channel.k8s.io"]), false).unwrap();
        assert_eq!((c.version, c.base64), (RcVersion::V1, true));
        assert_eq!(negotiate_ws(&[], false).unwrap().version, RcVersion::V1);
        assert!(negotiate_ws(&v(&["v5.channel.k8s.io"]), true).is_none());
        assert!(negotiate_ws(&v(&["SPDY/3.1+portforward.k8s.io"]), true).unwrap().spdy_tunnel);
        assert!(negotiate_ws(&v(&["SPDY/3.1+portforward.k8s.io"]), false).is_none());
        assert!(negotiate_ws(&v(&["v3.channel.k8s.io"]), false).is_none());
    }
}
