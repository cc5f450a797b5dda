//! Small static programs (compiled with `imagekit::compile_static`) for the critest images: a
//! web server (nginx / httpd / hostnet-nginx stand-ins) and the setuid `nnp` of `nonewprivs`.
//! They need nothing from the image around them. The pause is `imagekit::PAUSE_SRC`.

/// `nonewprivs`'s `nnp`: installed setuid root; prints its effective uid.
pub const NNP_SRC: &str = r#"
extern "C" { fn geteuid() -> u32; }
fn main() {
    println!("Effective uid: {}", unsafe { geteuid() });
}
"#;

/// A web server answering every request with 200 and `<root>/index.html` (or a built-in page).
/// Its settings come from `/etc/test-webserver.conf` (`key=value` lines):
/// - `port` (default 80);
/// - `pidfile`: its PID is written there (nginx writes `/var/run/nginx.pid`);
/// - `arg0`: the program re-executes itself once with this `argv[0]`, so `/proc/PID/cmdline`
///   reads like nginx's master (`nginx: master process ...`) while its comm and exe stay
///   the file's name (`pidof nginx` finds it);
/// - `banner`: printed on stderr at start (httpd's log must name "httpd");
/// - `root`: the document root.
///
/// SIGTERM, SIGINT and SIGQUIT end it with status 0 (it is PID 1 of its container).
pub const WEBSERVER_SRC: &str = r#"
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::Duration;

extern "C" {
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(code: i32) -> !;
}
extern "C" fn on_term(_sig: i32) { unsafe { _exit(0) } }

fn conf() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/etc/test-webserver.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn get<'a>(c: &'a [(String, String)], k: &str) -> Option<&'a str> {
    c.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
}

fn serve(mut s: TcpStream, body: &[u8]) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: test-webserver\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    if !req.starts_with(b"HEAD ") {
        let _ = s.write_all(body);
    }
    let _ = s.flush();
}

fn main() {
    let c = conf();
    if let Some(arg0) = get(&c, "arg0") {
        let me = std::env::args().next().unwrap_or_default();
        if me != arg0 {
            let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
            let e = std::process::Command::new(exe).arg0(arg0).exec();
            eprintln!("re-exec with argv[0] {arg0:?}: {e}");
        }
    }
    unsafe {
        signal(15, on_term);
        signal(2, on_term);
        signal(3, on_term);
    }
    let port: u16 = get(&c, "port").and_then(|p| p.parse().ok()).unwrap_or(80);
    let root = get(&c, "root").unwrap_or("/usr/share/nginx/html").to_string();
    let body = std::fs::read(format!("{root}/index.html"))
        .unwrap_or_else(|_| b"<html><body><h1>It works!</h1></body></html>\n".to_vec());
    let listener = match TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    if let Some(p) = get(&c, "pidfile") {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!("cannot write {p}: {e}");
        }
    }
    if let Some(b) = get(&c, "banner") {
        eprintln!("{b}");
    }
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    for s in listener.incoming() {
        if let Ok(s) = s {
            std::thread::spawn(move || serve(s, body));
        }
    }
}
"#;
