//! Interop with client-go's own streaming clients: the machine's `kubectl` (SPDY via
//! moby/spdystream, WebSocket v5 via gorilla) talks to a fake API server that, like kubelet,
//! turns `pods/NAME/exec|attach|portforward` into a streaming-server URL and proxies the upgrade
//! to berth's [`StreamingServer`] byte for byte. Skipped when `kubectl` is not installed.

use super::server::{StreamRequest, StreamingServer};
use super::tests::{env, Env};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1","namespace":"default","uid":"u1"},"spec":{"containers":[{"name":"c1","image":"busybox"}]},"status":{"phase":"Running"}}"#;

const API_V1: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},{"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#;

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str, key: &str) -> Vec<String> {
    q.split('&').filter_map(|kv| kv.split_once('=')).filter(|(k, _)| *k == key).map(|(_, v)| percent_decode(v)).collect()
}

type Seen = Arc<std::sync::Mutex<Vec<String>>>;

async fn serve_conn(mut c: TcpStream, srv: Arc<StreamingServer>, seen: Seen) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let (line, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let yes = |k: &str| query(q, k).first().is_some_and(|v| v == "true" || v == "1");
    let json = match path {
        "/api/v1/namespaces/default/pods/p1" => Some(POD),
        "/api" => Some(
            r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#,
        ),
        "/apis" => Some(r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#),
        "/api/v1" => Some(API_V1),
        "/version" => Some(r#"{"major":"1","minor":"32","gitVersion":"v1.32.0","platform":"linux/amd64"}"#),
        _ => None,
    };
    if let Some(body) = json {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = c.write_all(resp.as_bytes()).await;
        return;
    }
    let req = match path {
        "/api/v1/namespaces/default/pods/p1/exec" => StreamRequest::Exec {
            container_id: "c1".into(),
            cmd: query(q, "command"),
            tty: yes("tty"),
            stdin: yes("stdin"),
            stdout: yes("stdout"),
            stderr: yes("stderr"),
        },
        "/api/v1/namespaces/default/pods/p1/portforward" => {
            StreamRequest::PortForward { sandbox_id: "p1".into(), ports: query(q, "ports").iter().filter_map(|p| p.parse().ok()).collect() }
        }
        _ => {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.write_all(resp.as_bytes()).await;
            return;
        }
    };
    let upgrade = rest
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("upgrade")).map(|(_, v)| v.trim().to_ascii_lowercase()));
    seen.lock().unwrap().push(format!("{} {}", path.rsplit('/').next().unwrap_or(""), upgrade.unwrap_or_default()));
    let Ok(url) = srv.url_for(req) else { return };
    let token_path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default();
    let Ok(mut up) = TcpStream::connect(srv.local_addr()).await else { return };
    let fwd = format!("{method} {token_path} HTTP/1.1\r\n{rest}");
    if up.write_all(fwd.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
}

async fn fake_apiserver(e: &Env) -> (u16, tokio::task::JoinHandle<()>, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let srv = e.srv.clone();
    let seen = Seen::default();
    let seen2 = seen.clone();
    let h = tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(serve_conn(c, srv.clone(), seen2.clone()));
        }
    });
    (port, h, seen)
}

fn kubectl_present() -> bool {
    std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Kube {
    dir: tempfile::TempDir,
}

impl Kube {
    fn new(api_port: u16) -> Kube {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{api_port}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: x\n"
        );
        std::fs::write(dir.path().join("config"), cfg).unwrap();
        Kube { dir }
    }

    fn cmd(&self, websockets: bool, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.arg("--kubeconfig").arg(self.dir.path().join("config")).args(args);
        c.env("HOME", self.dir.path());
        c.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", if websockets { "true" } else { "false" });
        c.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", if websockets { "true" } else { "false" });
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        c
    }

    async fn run(&self, websockets: bool, args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
        let mut child = self.cmd(websockets, args).spawn().unwrap();
        let mut i = child.stdin.take().unwrap();
        i.write_all(stdin).await.unwrap();
        drop(i);
        let out =
            tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("kubectl did not finish in 60 s").unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn kubectl_exec_spdy_and_websocket() {
    if !kubectl_present() {
        eprintln!("skipped: kubectl is not installed");
        return;
    }
    let e = env().await;
    let (api, h, seen) = fake_apiserver(&e).await;
    let k = Kube::new(api);
    for ws in [false, true] {
        let (code, out, err) = k.run(ws, &["exec", "p1", "--", "exit3"], b"").await;
        assert_eq!(code, Some(3), "websockets={ws}: stdout {out:?} stderr {err:?}");
        assert_eq!(out, "out\n", "websockets={ws}: stderr {err:?}");
        assert!(err.contains("err\n"), "websockets={ws}: stderr {err:?}");
        let (code, out, err) = k.run(ws, &["exec", "-i", "p1", "--", "cat"], b"piped through kubectl").await;
        assert_eq!((code, out.as_str()), (Some(0), "piped through kubectl"), "websockets={ws}: stderr {err:?}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["exec spdy/3.1", "exec spdy/3.1", "exec websocket", "exec websocket"], "transports kubectl used");
    h.abort();
}

#[tokio::test]
async fn kubectl_port_forward_spdy_and_websocket() {
    if !kubectl_present() {
        eprintln!("skipped: kubectl is not installed");
        return;
    }
    let e = env().await;
    let (api, h, seen) = fake_apiserver(&e).await;
    let k = Kube::new(api);
    for ws in [false, true] {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = free.local_addr().unwrap().port();
        drop(free);
        let spec = format!("{local}:80");
        let mut child = k.cmd(ws, &["port-forward", "--address", "127.0.0.1", "pod/p1", &spec]).spawn().unwrap();
        let mut connected = None;
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", local)).await {
                connected = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut s = connected.expect("kubectl port-forward never listened");
        for round in 0..2 {
            let msg = format!("hello {round} over websockets={ws}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            let r = tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut buf)).await;
            if r.is_err() || buf != msg.as_bytes() {
                let _ = child.start_kill();
                let out = child.wait_with_output().await.unwrap();
                panic!("websockets={ws}: echo failed ({r:?}); kubectl stderr {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        drop(s);
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["portforward spdy/3.1", "portforward websocket"], "kubectl used SPDY, then SPDY tunnelled in WebSocket");
    h.abort();
}
