//! `nri-test-plugin`: the suite's NRI test plugin ([`berth_conformance::nri_plugin`]) as a
//! program a runtime launches from its plugin directory (nri's pre-launched plugins): it talks
//! over fd 3 (`NRI_PLUGIN_SOCKET=3`), registers as `NRI_PLUGIN_IDX`-`NRI_PLUGIN_NAME`, and
//! to containers annotated `conformance.berth.dev/nri-launched=yes` adds env
//! `NRI_LAUNCHED_CONFIG` set to the text its Configure carried. It exits when the runtime
//! closes the connection.

use anyhow::{bail, Context, Result};
use berth_conformance::nri_plugin::{Behaviour, TestPlugin};
use std::os::fd::FromRawFd;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set: run by an NRI runtime from its plugin directory"));
    let (name, idx, fd) = (var("NRI_PLUGIN_NAME")?, var("NRI_PLUGIN_IDX")?, var("NRI_PLUGIN_SOCKET")?);
    if fd != "3" {
        bail!("NRI_PLUGIN_SOCKET={fd}: expected 3");
    }
    // SAFETY: the runtime passes fd 3 open (one end of a unix socketpair) and nothing else owns
    // it in this process.
    #[allow(unsafe_code)]
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(3) };
    std_stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(std_stream)?;
    let behaviour = Behaviour {
        select: ("conformance.berth.dev/nri-launched".into(), "yes".into()),
        env_from_config: Some("NRI_LAUNCHED_CONFIG".into()),
        ..Default::default()
    };
    let plugin = TestPlugin::on(stream, &name, &idx, behaviour).await?;
    plugin.closed().await;
    Ok(())
}
