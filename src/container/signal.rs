//! Stop signals: the image's `StopSignal` (image-spec config), overridden by CRI
//! `ContainerConfig.stop_signal` (cri-api v0.36, KEP-4960), and reported back as
//! `ContainerStatus.stop_signal`.

use crate::cri::v1 as cri;
use crate::error::{Error, Result};

/// `SIGRTMIN` as glibc and musl programs see it (the kernel's 32 and 33 are taken by the C
/// library's threads); the CRI `SIGRTMINPLUS1..15` / `SIGRTMAXMINUS1..14` count from it and from
/// 64 (`SIGRTMAX`), as Go's and the shell's `kill -l` do.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal by name (`SIGTERM`, `TERM`, `SIGRTMIN+3`, `RTMAX-1`, the CRI spellings
/// `SIGRTMINPLUS3` / `SIGRTMAXMINUS1`, the aliases `SIGCLD`, `SIGPOLL`, `SIGIOT`) or number
/// (`15`, 1..=64), as image-spec `StopSignal` allows. `None` for anything else.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let offset = |rest: &str| -> Option<i32> { rest.parse::<i32>().ok().filter(|n| (1..=30).contains(n)) };
    let realtime = match name {
        "RTMIN" => Some(SIGRTMIN),
        "RTMAX" => Some(SIGRTMAX),
        _ => {
            if let Some(rest) = name.strip_prefix("RTMIN+").or_else(|| name.strip_prefix("RTMINPLUS")) {
                offset(rest).map(|n| SIGRTMIN + n)
            } else if let Some(rest) = name.strip_prefix("RTMAX-").or_else(|| name.strip_prefix("RTMAXMINUS")) {
                offset(rest).map(|n| SIGRTMAX - n)
            } else {
                None
            }
        }
    };
    if let Some(n) = realtime {
        return (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n);
    }
    let name = match name {
        "CLD" => "CHLD",
        "POLL" => "IO",
        "IOT" => "ABRT",
        other => other,
    };
    nix::sys::signal::Signal::iterator().find(|sig| sig.as_str().strip_prefix("SIG") == Some(name)).map(|sig| sig as i32)
}

/// The stop signal a new container records: CRI `stop_signal` when set, else the image's
/// `StopSignal` (empty: SIGTERM at stop time).
///
/// Errors: InvalidArgument naming `config.stop_signal` for a value outside the CRI `Signal`
/// enum, and naming the image's StopSignal when berth cannot send it.
pub fn for_new_container(config: &cri::ContainerConfig, image_stop_signal: &str) -> Result<String> {
    let requested = cri::Signal::try_from(config.stop_signal)
        .map_err(|_| Error::invalid("config.stop_signal", format!("{} is not a CRI Signal value", config.stop_signal)))?;
    if requested != cri::Signal::RuntimeDefault {
        return Ok(requested.as_str_name().to_string());
    }
    if !image_stop_signal.trim().is_empty() && parse_signal(image_stop_signal).is_none() {
        return Err(Error::invalid(
            "config.image",
            format!("the image's StopSignal {image_stop_signal:?} is not a signal (expected a name such as SIGQUIT or a number 1-64)"),
        ));
    }
    Ok(image_stop_signal.to_string())
}

/// The CRI `Signal` of a recorded stop signal: the first enum name for its number (the
/// canonical one: SIGABRT before SIGIOT), `RUNTIME_DEFAULT` when none was recorded.
pub fn to_cri(recorded: &str) -> cri::Signal {
    let Some(n) = parse_signal(recorded) else { return cri::Signal::RuntimeDefault };
    (1..=65)
        .filter_map(|v| cri::Signal::try_from(v).ok())
        .find(|s| parse_signal(s.as_str_name()) == Some(n))
        .unwrap_or(cri::Signal::RuntimeDefault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("99"), None);
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("SIGRTMAXMINUS1"), Some(63));
        assert_eq!(parse_signal("SIGCLD"), Some(libc::SIGCHLD));
        assert_eq!(parse_signal("SIGRTMIN+40"), None);
    }

    #[test]
    fn every_cri_signal_is_sendable_and_maps_back() {
        for v in 1..=65 {
            let s = cri::Signal::try_from(v).unwrap();
            let n = parse_signal(s.as_str_name()).unwrap_or_else(|| panic!("{} does not parse", s.as_str_name()));
            assert_eq!(parse_signal(to_cri(s.as_str_name()).as_str_name()), Some(n));
        }
        assert_eq!(to_cri(""), cri::Signal::RuntimeDefault);
        assert_eq!(to_cri("SIGIOT"), cri::Signal::Sigabrt);
        assert_eq!(to_cri("3"), cri::Signal::Sigquit);
    }

    #[test]
    fn cri_stop_signal_overrides_the_image() {
        let mut c = cri::ContainerConfig::default();
        assert_eq!(for_new_container(&c, "SIGQUIT").unwrap(), "SIGQUIT");
        assert_eq!(for_new_container(&c, "").unwrap(), "");
        assert!(for_new_container(&c, "SIGBOGUS").is_err());
        c.stop_signal = cri::Signal::Sigusr1 as i32;
        assert_eq!(for_new_container(&c, "SIGQUIT").unwrap(), "SIGUSR1");
        c.stop_signal = 999;
        assert!(for_new_container(&c, "").unwrap_err().to_string().contains("config.stop_signal"));
    }
}
